use thiserror::Error;

#[derive(Debug, Error)]
pub enum IndexError {
    #[error("vector has dimension {got}, the index expects {expected}")]
    Dimension { expected: usize, got: usize },
    #[error("vector has no direction (zero or not finite)")]
    ZeroVector,
    #[error("invalid filter: {0}")]
    Filter(String),
    #[error("index dump: {0}")]
    Dump(String),
    #[error("index i/o: {0}")]
    Io(#[from] std::io::Error),
}
