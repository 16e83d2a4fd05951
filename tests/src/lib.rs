//! Test harness: frames (`packet`) and a loaded datapath with its maps (`fixture`) for
//! `BPF_PROG_TEST_RUN` tables.

pub mod fixture;
pub mod packet;
