use thiserror::Error;

#[derive(Debug, Error)]
pub enum IndexError {
    #[error("vector has dimension {got}, the index expects {expected}")]
    Dimension { expected: usize, got: usize },
    #[error("vector has no direction (zero or not finite)")]
    ZeroVector,
    #[error("invalid filter: {0}")]
    Filter(String),
    /// An exact search would scan more points than allowed.
    #[error("an exact search here scans {points} points; the limit is {limit} (search.max_exact_points): add a filter or drop `exact`")]
    ScanTooLarge { points: usize, limit: usize },
    /// The graph does not hold what the table says it does (a bug).
    #[error("index graph: {0}")]
    Graph(String),
    #[error("keyword index: {0}")]
    Keyword(String),
    #[error("index dump: {0}")]
    Dump(String),
    #[error("index i/o: {0}")]
    Io(#[from] std::io::Error),
}
