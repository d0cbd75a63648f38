//! kitfleet-cni-wg (not yet implemented).
