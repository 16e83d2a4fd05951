//! How lbctl lays out data: `-o json`, or text aligned as Go's `text/tabwriter` aligns it
//! (Cilium's CLI uses it, and operators' scripts and eyes expect its columns).
//!
//! [`tabwrite`] reproduces `tabwriter.NewWriter(w, minwidth, 0, padding, padchar, 0)`
//! followed by `Flush`: cells are tab-terminated, so the text after a line's last tab is not
//! part of any column; a column's width is that of its widest cell plus `padding`, at least
//! `minwidth`, computed over a *block* of consecutive lines that have a cell in that column;
//! a newline-terminated line without tabs ends the formatting segment (Go flushes there).

use clap::ValueEnum;

/// `-o FORMAT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Machine-readable JSON.
    Json,
}

/// One cell: its text and its width in characters (Go counts runes).
struct Cell<'a> {
    text: &'a str,
    width: usize,
}

impl<'a> Cell<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            width: text.chars().count(),
        }
    }
}

struct Layout {
    minwidth: usize,
    padding: usize,
    padchar: char,
}

/// Aligns `text` as Go's tabwriter does with the given settings (tabwidth 0, flags 0).
pub fn tabwrite(text: &str, minwidth: usize, padding: usize, padchar: char) -> String {
    let layout = Layout {
        minwidth,
        padding,
        padchar,
    };
    let mut out = String::with_capacity(text.len() * 2);
    let mut segment: Vec<Vec<Cell<'_>>> = Vec::new();
    let mut rest = text;
    loop {
        match rest.split_once('\n') {
            Some((line, after)) => {
                let cells: Vec<Cell<'_>> = line.split('\t').map(Cell::new).collect();
                let ends_segment = cells.len() == 1;
                segment.push(cells);
                if ends_segment {
                    // Go flushes with the next, still empty line already begun: it is the
                    // unterminated last line of this segment and prints nothing.
                    segment.push(Vec::new());
                    layout.format(&mut out, &segment, &mut Vec::new(), 0, segment.len());
                    segment.clear();
                }
                rest = after;
            }
            None => {
                // The unterminated last line: its trailing text is a cell only if non-empty.
                let mut cells: Vec<Cell<'_>> = rest.split('\t').map(Cell::new).collect();
                if cells.last().is_some_and(|cell| cell.text.is_empty()) {
                    cells.pop();
                }
                segment.push(cells);
                break;
            }
        }
    }
    layout.format(&mut out, &segment, &mut Vec::new(), 0, segment.len());
    out
}

impl Layout {
    /// Formats lines `line0..line1`, knowing the widths of the columns left of `widths.len()`.
    fn format(
        &self,
        out: &mut String,
        lines: &[Vec<Cell<'_>>],
        widths: &mut Vec<usize>,
        mut line0: usize,
        line1: usize,
    ) {
        let column = widths.len();
        let has_column = |line: &Vec<Cell<'_>>| column + 1 < line.len();
        let mut this = line0;
        while this < line1 {
            if !lines.get(this).is_some_and(has_column) {
                this += 1;
                continue;
            }
            // A block of lines with a cell in this column starts here.
            self.write_lines(out, lines, widths, line0, this);
            line0 = this;
            let mut width = self.minwidth;
            while let Some(line) = lines
                .get(this)
                .filter(|line| this < line1 && has_column(line))
            {
                if let Some(cell) = line.get(column) {
                    width = width.max(cell.width + self.padding);
                }
                this += 1;
            }
            widths.push(width);
            self.format(out, lines, widths, line0, this);
            widths.pop();
            line0 = this;
        }
        self.write_lines(out, lines, widths, line0, line1);
    }

    fn write_lines(
        &self,
        out: &mut String,
        lines: &[Vec<Cell<'_>>],
        widths: &[usize],
        line0: usize,
        line1: usize,
    ) {
        for (index, line) in lines.iter().enumerate().take(line1).skip(line0) {
            for (j, cell) in line.iter().enumerate() {
                out.push_str(cell.text);
                if let Some(&width) = widths.get(j) {
                    out.extend(std::iter::repeat_n(
                        self.padchar,
                        width.saturating_sub(cell.width),
                    ));
                }
            }
            // Every line but the unterminated last one had a newline.
            if index + 1 < lines.len() {
                out.push('\n');
            }
        }
    }
}

/// A two-column `key   value` listing (tabwriter minwidth 0, padding 3).
pub fn key_value_table<'a>(rows: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut text = String::new();
    for (key, value) in rows {
        text.push_str(key);
        text.push('\t');
        text.push_str(value);
        text.push('\n');
    }
    table(&text, 0, 3)
}

/// A table for a terminal: [`tabwrite`] with spaces, without the padding Go's tabwriter leaves
/// at the end of a line (trailing spaces are noise in diffs, copies and `grep 'x$'`).
pub fn table(text: &str, minwidth: usize, padding: usize) -> String {
    let aligned = tabwrite(text, minwidth, padding, ' ');
    let mut out = String::with_capacity(aligned.len());
    for line in aligned.split_inclusive('\n') {
        match line.strip_suffix('\n') {
            Some(line) => {
                out.push_str(line.trim_end_matches(' '));
                out.push('\n');
            }
            None => out.push_str(line.trim_end_matches(' ')),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Go's `text/tabwriter` tests (settings: minwidth, padding, padchar).
    #[test]
    fn matches_go_tabwriter() {
        let cases: &[(&str, usize, usize, char, &str, &str)] = &[
            ("1a", 8, 1, '.', "", ""),
            ("2", 8, 1, '.', "\n\n\n", "\n\n\n"),
            ("3", 8, 1, '.', "a\nb\nc", "a\nb\nc"),
            ("4a", 8, 1, '.', "\t", ""),
            ("5", 8, 1, '.', "*\t*", "*.......*"),
            ("5b", 8, 1, '.', "*\t*\n", "*.......*\n"),
            ("5c", 8, 1, '.', "*\t*\t", "*.......*"),
            ("6", 8, 1, '.', "\t\n", "........\n"),
            ("7b", 8, 1, ' ', "b) foo\tbar", "b) foo  bar"),
            ("7e", 8, 1, '.', "e) foo\tbar\t\n", "e) foo..bar.....\n"),
            (
                "9a",
                1,
                0,
                '.',
                "1\t2\t3\t4\n11\t222\t3333\t44444\n",
                "1.2..3...4\n11222333344444\n",
            ),
            ("10b", 5, 0, '.', "1\t2\t3\t4\t\n", "1....2....3....4....\n"),
            (
                "11",
                8,
                1,
                '.',
                "本\tb\tc\naa\t本本本\tcccc\tddddd\naaa\tbbbb\n",
                "本.......b.......c\naa......本本本.....cccc....ddddd\naaa.....bbbb\n",
            ),
            (
                "12b",
                2,
                0,
                ' ',
                "a\tb\tc\naa\tbbb\tcccc\naaa\tbbbb\n",
                "a  b  c\naa bbbcccc\naaabbbb\n",
            ),
            (
                "13b",
                4,
                3,
                '.',
                "4444\t333\t22\t1\t333\n999999999\t22\n7\t22\n\t\t\t88888888\n\n666666\t666666\t666666\t4444\n1\t1\t999999999\t0000000000\n",
                "4444........333...22...1...333\n999999999...22\n7...........22\n....................88888888\n\n666666...666666...666666......4444\n1........1........999999999...0000000000\n",
            ),
        ];
        for (name, minwidth, padding, padchar, input, expected) in cases {
            assert_eq!(
                tabwrite(input, *minwidth, *padding, *padchar),
                *expected,
                "case {name}"
            );
        }
    }

    #[test]
    fn tables_have_no_trailing_spaces() {
        assert_eq!(
            table(
                "ID\tFrontend\tBackend\n1\t10.96.0.10:53/UDP\t1 => a\n\t\t2 => bb\n",
                5,
                3
            ),
            "ID   Frontend            Backend\n1    10.96.0.10:53/UDP   1 => a\n                         2 => bb\n"
        );
    }

    #[test]
    fn key_value_table_aligns_values() {
        assert_eq!(
            key_value_table([("bpf-lb-external-clusterip", "false"), ("source", "kube")]),
            "bpf-lb-external-clusterip   false\nsource                      kube\n"
        );
    }
}
