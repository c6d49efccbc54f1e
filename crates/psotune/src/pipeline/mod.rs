//! Loading a diffusers folder and running text-to-image sampling.
