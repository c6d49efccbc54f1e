//! CLIP's text side as Stable Diffusion uses it: transformers'
//! `CLIPTextModel` / `CLIPTextModelWithProjection` and the CLIP BPE
//! tokenizer, matching transformers 5.24 (models/clip/).

mod bpe;
mod config;
mod text_model;
mod tokenizer;
mod visit;

pub use bpe::bytes_to_unicode;
pub use config::{ClipActivation, ClipTextConfig};
pub use text_model::{
    ClipAttention, ClipEncoder, ClipEncoderLayer, ClipMlp, ClipTextEmbeddings, ClipTextModel, ClipTextOutput, ClipTextTransformer,
    Embedding,
};
pub use tokenizer::{ClipTokenizer, DEFAULT_MAX_LENGTH};
pub use visit::{canonical_path, text_encoder_targets};
