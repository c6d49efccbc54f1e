//! Which model of the pipeline an adapter belongs to. Adapters travel as
//! one list of [`LoraWeights`] whose paths name the component the way
//! diffusers' LoRA files do: UNet modules bare (`mid_block.attentions.0...`),
//! text-encoder modules prefixed `text_encoder.` or `text_encoder_2.`
//! (`text_encoder.text_model.encoder.layers.0.self_attn.q_proj`). The same
//! names key the trained parameters in checkpoints.

use crate::error::Result;
use crate::models::clip::ClipTextModel;
use crate::models::unet::UNet2DConditionModel;
use crate::nn::{attach_lora, LoraSet, LoraSwitch, LoraWeights};

/// diffusers' component names of the text encoders, by index.
pub const TEXT_ENCODERS: [&str; 2] = ["text_encoder", "text_encoder_2"];

/// Which text encoder a path belongs to and its path inside it, or None
/// for a UNet path.
pub fn text_encoder_of(path: &str) -> Option<(usize, &str)> {
    // `text_encoder_2.` first: `text_encoder.` is not its prefix, but keep
    // the longer name first anyway.
    for i in [1, 0] {
        if let Some(rest) = path.strip_prefix(TEXT_ENCODERS[i]).and_then(|r| r.strip_prefix('.')) {
            return Some((i, rest));
        }
    }
    None
}

/// Adapters split into the UNet's and each text encoder's, with the
/// component prefix removed from text-encoder paths.
pub fn split_components(weights: &[LoraWeights]) -> (Vec<LoraWeights>, [Vec<LoraWeights>; 2]) {
    let (mut unet, mut te) = (Vec::new(), [Vec::new(), Vec::new()]);
    for w in weights {
        match text_encoder_of(&w.path) {
            Some((i, rest)) => te[i].push(LoraWeights { path: rest.to_string(), ..w.clone() }),
            None => unet.push(w.clone()),
        }
    }
    (unet, te)
}

/// Prefix every path of a text encoder's set with its component name.
pub fn prefixed(mut set: LoraSet, index: usize) -> LoraSet {
    for (p, _) in &mut set.adapters {
        *p = format!("{}.{p}", TEXT_ENCODERS[index]);
    }
    set
}

/// Attach adapters of every component under one `switch`: UNet paths to
/// `unet`, `text_encoder[_2].` paths to `text_encoders[i]`. A file with
/// text-encoder adapters for an encoder the pipeline lacks is an error.
pub fn attach_all(weights: &[LoraWeights], unet: &mut UNet2DConditionModel, text_encoders: &mut [&mut ClipTextModel], switch: &LoraSwitch) -> Result<LoraSet> {
    let (u, te) = split_components(weights);
    let mut set = if u.is_empty() { LoraSet { switch: switch.clone(), adapters: Vec::new() } } else { attach_lora(unet, &u, switch)? };
    for (i, part) in te.iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        let Some(model) = text_encoders.get_mut(i) else {
            return Err(crate::Error::invalid(format!("{} adapters for {}, which this pipeline does not have", part.len(), TEXT_ENCODERS[i])));
        };
        let s = attach_lora(&mut **model, part, switch).map_err(|e| crate::Error::invalid(format!("{}: {e}", TEXT_ENCODERS[i])))?;
        set.adapters.extend(prefixed(s, i).adapters);
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_by_component() {
        assert_eq!(text_encoder_of("text_encoder.text_model.encoder.layers.0.mlp.fc1"), Some((0, "text_model.encoder.layers.0.mlp.fc1")));
        assert_eq!(text_encoder_of("text_encoder_2.text_projection"), Some((1, "text_projection")));
        assert_eq!(text_encoder_of("mid_block.attentions.0.proj_in"), None);
        assert_eq!(text_encoder_of("text_encoderx.a"), None);
    }
}
