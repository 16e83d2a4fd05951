//! Medians, percentiles and spread over samples.

/// Summary of one measurement over every sample of every round.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    /// Median of all samples.
    pub p50: f64,
    /// 99th percentile of all samples.
    pub p99: f64,
    /// Smallest per-round median.
    pub round_min: f64,
    /// Largest per-round median.
    pub round_max: f64,
    /// Samples.
    pub n: usize,
}

/// The `q` quantile (0..=1) of `sorted` (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Median of `values` (any order).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    quantile(&v, 0.5)
}

/// Summarises rounds of samples: p50/p99 over all of them, and the range of the rounds' medians.
pub fn summarize(rounds: &[Vec<f64>]) -> Summary {
    let mut all: Vec<f64> = rounds.iter().flatten().copied().collect();
    all.sort_by(f64::total_cmp);
    let medians: Vec<f64> = rounds
        .iter()
        .filter(|r| !r.is_empty())
        .map(|r| median(r))
        .collect();
    Summary {
        p50: quantile(&all, 0.5),
        p99: quantile(&all, 0.99),
        round_min: medians.iter().copied().fold(f64::INFINITY, f64::min),
        round_max: medians.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        n: all.len(),
    }
}
