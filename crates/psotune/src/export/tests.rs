//! Round trips through both LoRA formats and the merged UNet, and the LDM
//! module names against the ones sd-scripts / A1111 use for real SD and SDXL.

use super::*;
use crate::nn::lora::tests::{max_diff, randomize_b, run, tiny_unet};
use crate::nn::{apply_lora, LoraConfig, LoraTargets, TargetPreset};
use crate::scratch::ScratchDir;

fn tmp(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("psotune-export-{name}")).unwrap()
}

fn sdxl_layout() -> UNetLayout {
    UNetLayout { down: vec![(2, false), (2, true), (2, true)], up: vec![(3, true), (3, true), (3, false)], sdxl: true }
}

fn sd_layout() -> UNetLayout {
    UNetLayout { down: vec![(2, true), (2, true), (2, true), (2, false)], up: vec![(3, false), (3, true), (3, true), (3, true)], sdxl: false }
}

#[test]
fn ldm_names_match_sd_scripts() {
    let xl = sdxl_layout();
    let cases = [
        ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"),
        ("down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2", "lora_unet_input_blocks_8_1_transformer_blocks_9_ff_net_2"),
        ("down_blocks.0.resnets.1.conv1", "lora_unet_input_blocks_2_0_in_layers_2"),
        ("down_blocks.0.downsamplers.0.conv", "lora_unet_input_blocks_3_0_op"),
        ("down_blocks.1.resnets.0.conv_shortcut", "lora_unet_input_blocks_4_0_skip_connection"),
        ("mid_block.attentions.0.proj_in", "lora_unet_middle_block_1_proj_in"),
        ("mid_block.resnets.1.time_emb_proj", "lora_unet_middle_block_2_emb_layers_1"),
        ("up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_out.0", "lora_unet_output_blocks_2_1_transformer_blocks_0_attn2_to_out_0"),
        ("up_blocks.0.upsamplers.0.conv", "lora_unet_output_blocks_2_2_conv"),
        ("up_blocks.1.resnets.0.conv2", "lora_unet_output_blocks_3_0_out_layers_3"),
        ("up_blocks.2.resnets.2.conv1", "lora_unet_output_blocks_8_0_in_layers_2"),
        ("conv_in", "lora_unet_input_blocks_0_0"),
        ("conv_out", "lora_unet_out_2"),
        ("time_embedding.linear_2", "lora_unet_time_embed_2"),
        ("add_embedding.linear_1", "lora_unet_label_emb_0_0"),
    ];
    for (path, want) in cases {
        assert_eq!(kohya_name(path, &xl, KohyaNames::Ldm).as_deref(), Some(want), "{path}");
    }
    // SD 1.x: the first up block has no attention, so its upsampler is `.1.conv`.
    let sd = sd_layout();
    assert_eq!(ldm_path("up_blocks.0.upsamplers.0.conv", &sd).as_deref(), Some("output_blocks.2.1.conv"));
    assert_eq!(ldm_path("up_blocks.1.upsamplers.0.conv", &sd).as_deref(), Some("output_blocks.5.2.conv"));
    assert_eq!(ldm_path("down_blocks.3.resnets.1.conv2", &sd).as_deref(), Some("input_blocks.11.0.out_layers.3"));
    assert_eq!(ldm_path("up_blocks.3.attentions.2.proj_out", &sd).as_deref(), Some("output_blocks.11.1.proj_out"));
    assert_eq!(
        kohya_name("down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_out.0", &sd, KohyaNames::Diffusers).as_deref(),
        Some("lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_attn1_to_out_0")
    );
    assert_eq!(sd.default_names(), KohyaNames::Diffusers);
    assert_eq!(xl.default_names(), KohyaNames::Ldm);
    assert!(ldm_path("encoder_hid_proj", &sd).is_none());
}

#[test]
fn both_formats_round_trip() {
    let dir = tmp("roundtrip");
    for (sdxl, linear) in [(false, false), (true, true)] {
        let base = tiny_unet(sdxl, linear);
        let mut unet = base.clone();
        let lora = apply_lora(&mut unet, &LoraConfig::new(2, 3.0, LoraTargets::preset(TargetPreset::All))).unwrap();
        randomize_b(&lora, 5);
        let want = run(&unet);
        let layout = UNetLayout::of(&unet);
        let files = [
            (dir.join("peft.safetensors"), None),
            (dir.join("kohya-diffusers.safetensors"), Some(KohyaNames::Diffusers)),
            (dir.join("kohya-ldm.safetensors"), Some(KohyaNames::Ldm)),
        ];
        for (path, names) in &files {
            match names {
                None => save_peft(path, &lora.weights()).unwrap(),
                Some(n) => save_kohya(path, &lora.weights(), &layout, *n).unwrap(),
            }
            let mut fresh = base.clone();
            let switch = LoraSwitch::new();
            let loaded = load_lora(path, &mut fresh, &switch).unwrap();
            assert_eq!(loaded.len(), lora.len(), "{}", path.display());
            for ((p1, a), (p2, b)) in lora.adapters.iter().zip(loaded.adapters.iter()) {
                assert_eq!(p1, p2);
                assert_eq!(a.alpha, b.alpha);
                assert_eq!(max_diff(a.lora_a.as_tensor(), b.lora_a.as_tensor()), 0.0);
                assert_eq!(max_diff(a.lora_b.as_tensor(), b.lora_b.as_tensor()), 0.0);
            }
            assert_eq!(max_diff(&run(&fresh), &want), 0.0, "{}", path.display());
            // Loading twice onto the same layers is refused.
            assert!(load_lora(path, &mut fresh, &switch).is_err());
        }
    }
}

#[test]
fn foreign_keys_are_errors() {
    let dir = tmp("foreign");
    let mut unet = tiny_unet(false, true);
    let lora = apply_lora(&mut unet, &LoraConfig::new(1, 1.0, LoraTargets::preset(TargetPreset::Attn))).unwrap();
    let mut tensors = to_kohya_tensors(&lora.weights(), &UNetLayout::of(&unet), KohyaNames::Diffusers).unwrap();
    let t = tensors.iter().find(|(k, _)| k.ends_with(".lora_down.weight")).unwrap().1.clone();
    tensors.insert("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight".into(), t.clone());
    tensors.insert("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight".into(), t);
    let path = dir.join("te.safetensors");
    st::write_with_metadata(&path, &tensors, None).unwrap();
    let mut fresh = tiny_unet(false, true);
    // Text-encoder adapters are read, but a UNet alone refuses them rather
    // than dropping them.
    let err = load_lora(&path, &mut fresh, &LoraSwitch::new()).unwrap_err().to_string();
    assert!(err.contains("text-encoder") && err.contains("text_encoder.text_model.encoder.layers.0.mlp.fc1"), "{err}");
    tensors.insert("lora_te_text_model_encoder_layers_0_mlp_fc9.lora_down.weight".into(), tensors["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"].clone());
    st::write_with_metadata(&path, &tensors, None).unwrap();
    let err = load_lora(&path, &mut fresh, &LoraSwitch::new()).unwrap_err().to_string();
    assert!(err.contains("match no UNet or text-encoder module") && err.contains("mlp_fc9"), "{err}");
}
