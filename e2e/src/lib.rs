//! kitfleet-e2e (not yet implemented).
