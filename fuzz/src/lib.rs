//! The fuzz targets' shared checks (see `checks`), as a library for `fuzz_targets/*.rs`.

pub mod checks;
