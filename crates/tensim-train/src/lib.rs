//! Training demos for tensim: small bilinear networks trained with candle (autograd + AdamW),
//! checkpoints written as self-describing tensim/1 files.

pub mod backdoor;
pub mod carriers;
pub mod data;
pub mod forgetting;
pub mod grokking;
pub mod induction;
pub mod model;
pub mod output;
pub mod schedule;

/// Errors of the training code: candle's and tensim's.
#[derive(Debug)]
pub enum TrainError {
    Candle(candle_core::Error),
    Tensim(tensim::Error),
}

impl std::fmt::Display for TrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrainError::Candle(e) => write!(f, "training: {e}"),
            TrainError::Tensim(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for TrainError {}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Candle(e)
    }
}

impl From<tensim::Error> for TrainError {
    fn from(e: tensim::Error) -> Self {
        TrainError::Tensim(e)
    }
}
