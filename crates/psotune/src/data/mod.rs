//! Datasets (image folders, JSONL pair manifests, Pick-a-Pic parquet). Every reader checks its whole input up front (files exist,
//! captions present, sizes right) and reports the file and line of the first
//! problem, so that bad data fails before any expensive work starts.

mod image_folder;
mod images;
mod make_pairs;
mod pairs;
mod parquet_pairs;

pub use image_folder::{describe_selection, load_image_batch, ImageFolder, ImageItem, METADATA_FILE};
pub use images::{check_image_size, list_images};
pub use pairs::{PairItem, PairManifest};
pub use make_pairs::{best_and_worst, make_pairs, PairsSpec, PairsSummary};
pub use parquet_pairs::{preferred_first, resize_center_crop, ParquetPair, ParquetPairs};
