//! The values on their own: property tests of the NHS number and of a plan's
//! visibility, and every input fuzzing found, kept as a regression test.

mod fuzz_regressions;
mod properties;
