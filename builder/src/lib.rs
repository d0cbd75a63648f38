//! kitfleet-builder (not yet implemented).
