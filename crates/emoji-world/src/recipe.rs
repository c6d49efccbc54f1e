//! The training recipe of the emoji model, one section per stage. Each
//! stage's run directory stores its section (with the model config), so a
//! changed recipe starts a fresh run instead of resuming a different one.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Recipe {
    pub vae: VaeRecipe,
    pub teacher: TeacherRecipe,
    pub distill: DistillRecipe,
    pub evaluator: EvaluatorRecipe,
    pub report: ReportRecipe,
}

/// AutoencoderKL on all three styles: L1 + edge L1 + a small KL.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct VaeRecipe {
    /// Optimizer steps.
    pub steps: u64,
    /// Images per step.
    pub batch: usize,
    /// Peak learning rate (cosine schedule after warmup).
    pub lr: f64,
    /// Linear warmup steps.
    pub warmup: u64,
    /// Weight of the KL term (per latent element, against the per-pixel L1).
    pub kl_weight: f64,
    /// Weight of the L1 between horizontal/vertical pixel differences,
    /// which keeps emoji outlines crisp.
    pub edge_weight: f64,
    /// Checkpoint every this many steps.
    pub checkpoint_every: u64,
    pub seed: u64,
}

impl Default for VaeRecipe {
    fn default() -> Self {
        VaeRecipe { steps: 1000, batch: 32, lr: 1e-3, warmup: 100, kl_weight: 1e-5, edge_weight: 0.5, checkpoint_every: 250, seed: 1 }
    }
}

/// The multi-step teacher: UNet and text encoder trained together from
/// scratch with the epsilon loss at uniform t, on Twemoji only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct TeacherRecipe {
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    /// Fraction of captions replaced by "" (for classifier-free guidance).
    pub cond_drop: f64,
    /// EMA decay of the weights that become the teacher.
    pub ema: f64,
    pub checkpoint_every: u64,
    pub seed: u64,
}

impl Default for TeacherRecipe {
    fn default() -> Self {
        TeacherRecipe {
            steps: 6000,
            batch: 32,
            lr: 4e-4,
            warmup: 300,
            weight_decay: 0.01,
            cond_drop: 0.1,
            ema: 0.999,
            checkpoint_every: 250,
            seed: 2,
        }
    }
}

/// Latent consistency distillation (LCM) of the teacher with guidance
/// baked in, on the 50-step DDIM grid (skip 20).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct DistillRecipe {
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    pub warmup: u64,
    /// The last `decay` steps take the learning rate linearly down to 0
    /// (0: constant to the end).
    pub decay: u64,
    /// Classifier-free guidance scale of the teacher's ODE step.
    pub guidance: f64,
    /// EMA decay of the target network.
    pub ema: f64,
    /// Pseudo-Huber constant.
    pub huber_c: f64,
    /// Grid points of the teacher schedule (50 in LCM).
    pub ddim_steps: usize,
    pub checkpoint_every: u64,
    pub seed: u64,
}

impl Default for DistillRecipe {
    fn default() -> Self {
        DistillRecipe {
            steps: 2000,
            batch: 32,
            lr: 1e-4,
            warmup: 100,
            decay: 0,
            guidance: 3.0,
            ema: 0.95,
            huber_c: 0.001,
            ddim_steps: 50,
            checkpoint_every: 200,
            seed: 3,
        }
    }
}

/// The evaluator (style + category classifier on all three styles); the
/// other settings are psotune's `EvaluatorTrainConfig` defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct EvaluatorRecipe {
    /// Passes over the training images.
    pub epochs: u64,
    /// Images per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    pub seed: u64,
}

impl Default for EvaluatorRecipe {
    fn default() -> Self {
        EvaluatorRecipe { epochs: 10, batch: 64, lr: 2e-3, seed: 0 }
    }
}

/// The report: teacher and student measured on the same prompts and seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ReportRecipe {
    /// Prompts (one per base-set concept, a fixed random subset).
    pub prompts: usize,
    /// Teacher step counts (DDIM with its guidance).
    pub teacher_steps: Vec<usize>,
    /// Student step counts (LCM).
    pub student_steps: Vec<usize>,
    /// Images per sampling batch.
    pub batch: usize,
    /// Rows of the teacher-vs-student grid.
    pub grid_prompts: usize,
    pub seed: u64,
}

impl Default for ReportRecipe {
    fn default() -> Self {
        ReportRecipe { prompts: 512, teacher_steps: vec![25, 50], student_steps: vec![1, 2, 4], batch: 64, grid_prompts: 8, seed: 0 }
    }
}
