//! Empty on purpose: the programs live in the `lb` binary (`main.rs`); this library only
//! exists so that the host toolchain can check the crate.
#![no_std]
