//! Judging what a model draws, in the emoji world's miniature of the
//! usual image metrics: sample a fixed prompt set at fixed seeds, then
//! measure the images with the emoji evaluator (emoji-FID against a
//! reference set, style score, prompt alignment by the category head) and
//! a sharpness statistic. The emoji-world report, `psotune eval` and the
//! README's experiment tables all go through here, so their numbers are
//! comparable.

mod compare;
mod judge;
mod prompts;
mod sample;

pub use compare::{compare, Candidate, CompareRow, CompareSpec, Comparison, InstanceCheck};
pub use judge::{Judge, Measures};
pub use prompts::PromptSet;
pub use sample::{quantize_8bit, sample_prompts, SampleSettings};
