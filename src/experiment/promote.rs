//! Promoting an experiment's winner: `PATCH /v1/experiments/{id} {"status": "stopped", "promote": "<model>"}`
//! makes the model of one of a stopped experiment's arms the engine's default model, and records on the experiment
//! which arm and model won (with the model's version serving then), the evidence (the report at that moment) and
//! when. An experiment is promoted at most once. Uses the engine for the default model and its version.

use super::report::{self, ReportSettings};
use super::{Experiment, ExperimentError, Experiments, Promotion, Status};
use crate::engine::Engine;
use crate::store::StoreError;

impl Experiments {
    /// Checks that `experiment` (as patched, not yet saved) can promote `model`, makes the model the default and
    /// sets the promotion; the caller saves the experiment. Nothing changes when a check fails. The default model
    /// is set before the promotion is saved, so that a failed save can be retried (the default is idempotent).
    pub(super) async fn promote(
        &self,
        experiment: &mut Experiment,
        model: &str,
        engine: &Engine,
        at: String,
    ) -> Result<(), ExperimentError> {
        if let Some(done) = &experiment.promotion {
            return Err(ExperimentError::AlreadyPromoted {
                name: experiment.name.clone(),
                model: done.model.clone(),
                at: done.promoted_at.clone(),
            });
        }
        if experiment.status != Status::Stopped {
            return Err(ExperimentError::NotStopped {
                name: experiment.name.clone(),
                status: experiment.status.as_str(),
            });
        }
        let Some(arm) = experiment.arms.iter().find(|a| a.model == model).map(|a| a.name.clone()) else {
            let models: Vec<String> = experiment.arms.iter().map(|a| format!("`{}`", a.model)).collect();
            return Err(ExperimentError::NotAnArmModel {
                experiment: experiment.name.clone(),
                model: model.to_string(),
                models: models.join(", "),
            });
        };
        // A model retired since the experiment ran is no longer served: 404 unknown-model.
        let version = engine.model(model)?.info.version.clone();
        self.log.flush().await;
        let evidence = report::build(self.store.as_ref(), experiment, ReportSettings::default()).await?;
        let report = serde_json::to_value(&evidence)
            .map_err(|e| StoreError::Corrupt(format!("the report cannot be kept as JSON: {e}")))?;
        engine.set_default_model(model).await?;
        experiment.promotion = Some(Promotion { arm, model: model.to_string(), version, promoted_at: at, report });
        Ok(())
    }
}
