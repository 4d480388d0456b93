//! Applying the config file's `[[models]]` to a running server, at start-up and on SIGHUP: each entry is compared
//! with the entries as last applied (kept in the store), and what changed in the file goes through the model life
//! cycle — a new entry is added, an entry whose folder changed replaces the serving version, a removed entry is
//! retired (unless an experiment uses it or it is the default). Entries unchanged in the file leave the model
//! as the API last left it, so API changes outlive restarts until the file itself changes. Other settings are
//! read at start-up only.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Config;
use crate::engine::Engine;
use crate::experiment::Experiments;
use crate::util::error_chain;

/// The store setting holding the config's models as last applied, a JSON object name → folder.
const CONFIG_MODELS: &str = "config_models";

/// What one application of the config changed, by model.
#[derive(Debug, Default)]
pub struct Applied {
    pub changed: Vec<String>,
    pub retired: Vec<String>,
    /// Models whose change was refused, with the reason (logged too).
    pub refused: Vec<(String, String)>,
}

pub async fn apply_models(engine: &Arc<Engine>, experiments: &Experiments, config: &Config) -> anyhow::Result<Applied> {
    let configured: BTreeMap<String, String> = engine
        .configure_models(config)?
        .into_iter()
        .map(|(name, folder)| (name, folder.display().to_string()))
        .collect();
    let store = engine.store();
    let last: Option<BTreeMap<String, String>> = match store.setting(CONFIG_MODELS).await? {
        Some(text) => Some(serde_json::from_str(&text)?),
        None => None,
    };
    let mut applied = Applied::default();
    if let Some(last) = last {
        for (name, folder) in &configured {
            if last.get(name) == Some(folder) {
                continue;
            }
            let serving = engine.models().get(name).map(|m| m.path.display().to_string());
            if serving.as_ref() == Some(folder) {
                continue;
            }
            match engine.apply_config_change(name, folder.into()).await {
                Ok(_) => applied.changed.push(name.clone()),
                Err(err) => applied.refused.push((name.clone(), error_chain(&err))),
            }
        }
        let served = |name: &str| engine.models().contains_key(name) || engine.candidates().contains_key(name);
        for name in last.keys().filter(|name| !configured.contains_key(*name) && served(name)) {
            match experiments.retire_model(engine, name).await {
                Ok(_) => applied.retired.push(name.clone()),
                Err(err) => applied.refused.push((name.clone(), error_chain(&err))),
            }
        }
    }
    for (name, reason) in &applied.refused {
        tracing::error!(model = %name, reason = %reason, "the config file's change to this model was refused");
    }
    if !applied.changed.is_empty() || !applied.retired.is_empty() {
        tracing::info!(changed = ?applied.changed, retired = ?applied.retired, "config file's models applied");
    }
    store.set_setting(CONFIG_MODELS, &serde_json::to_string(&configured)?).await?;
    Ok(applied)
}
