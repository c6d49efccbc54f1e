//! CLIP as transformers lays it out: the text side Stable Diffusion uses
//! (`CLIPTextModel` / `CLIPTextModelWithProjection` and the CLIP BPE
//! tokenizer), and the vision tower and full `CLIPModel` that the reward
//! scorers use, matching transformers 5.24 (models/clip/).

mod bpe;
mod clip_model;
mod config;
mod model_config;
mod text_model;
mod tokenizer;
mod vision_model;
mod visit;

pub use bpe::bytes_to_unicode;
pub use clip_model::{ClipImageEncoder, ClipModel};
pub use config::{ClipActivation, ClipTextConfig};
pub use model_config::{ClipConfig, ClipVisionConfig};
pub(crate) use text_model::causal_mask;
pub use text_model::{
    ClipAttention, ClipEncoder, ClipEncoderLayer, ClipMlp, ClipTextEmbeddings, ClipTextModel, ClipTextOutput, ClipTextTransformer,
    Embedding,
};
pub use tokenizer::{ClipTokenizer, DEFAULT_MAX_LENGTH};
pub use vision_model::{ClipVisionEmbeddings, ClipVisionTransformer};
pub use visit::{canonical_path, text_encoder_targets};
