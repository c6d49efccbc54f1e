//! Noise schedules and samplers: pure math, separate from models.
