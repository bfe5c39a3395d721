//! Placeholder, filled by the tower-ratelimit issue.
