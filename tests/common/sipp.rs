//! placeholder, filled by the sipp harness
