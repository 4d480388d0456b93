//! Retiring a model is the experiments' business too: a model that a running (or paused) experiment serves an
//! arm with cannot be retired until that experiment stops.

use std::sync::Arc;

use super::{ExperimentError, Experiments, Status};
use crate::engine::{Engine, ModelDetail};

impl Experiments {
    /// The running or paused experiment that has an arm served by `model`, if any.
    pub fn using_model(&self, model: &str) -> Option<String> {
        self.all()
            .iter()
            .filter(|e| matches!(e.status, Status::Running | Status::Paused))
            .find(|e| e.arms.iter().any(|arm| arm.model == model))
            .map(|e| e.name.clone())
    }

    /// Retires a model unless a running or paused experiment uses it.
    pub async fn retire_model(&self, engine: &Arc<Engine>, model: &str) -> Result<ModelDetail, ExperimentError> {
        if let Some(experiment) = self.using_model(model) {
            return Err(ExperimentError::ModelInUse { model: model.to_string(), experiment });
        }
        Ok(engine.retire_model(model).await?)
    }
}
