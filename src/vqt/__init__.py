"""Visual Query Tuning."""
