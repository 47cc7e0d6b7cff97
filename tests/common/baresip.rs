//! placeholder, filled by the baresip harness
