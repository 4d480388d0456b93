//! The PostgreSQL store (to be written): shared by replicas.

use std::sync::Arc;

use super::location::{redact, PostgresSettings};
use super::{Store, StoreError};

pub struct PgStore;

impl PgStore {
    pub async fn connect(url: &str, _settings: &PostgresSettings) -> Result<Arc<dyn Store>, StoreError> {
        Err(StoreError::NotADatabase { location: redact(url), reason: "PostgreSQL is not built yet".into() })
    }
}
