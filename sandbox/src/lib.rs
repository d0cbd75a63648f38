//! kitfleet-sandbox (not yet implemented).
