//! The API's one error type and the one place where every failure becomes an HTTP status: client mistakes are
//! 4xx `application/problem+json` (RFC 9457) with a message that says what to change; overload and warm-up are
//! 503 with `Retry-After`; anything else is a 500 whose details go to the log, not to the client.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use crate::encoder::EncoderError;
use crate::engine::EngineError;
use crate::eval::live::LiveEvalError;
use crate::experiment::ExperimentError;
use crate::index::IndexError;
use crate::store::StoreError;
use crate::util::error_chain;
use crate::util::json::integral_floats_to_integers;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Short machine-readable kind; the problem's `type` is `/problems/<kind>`.
    pub kind: &'static str,
    pub detail: String,
    pub extra: Map<String, Value>,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Self { status, kind, detail: detail.into(), extra: Map::new(), retry_after_secs: None }
    }

    /// 422: the request is well-formed but asks for something invalid.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-request", detail)
    }

    /// 413: the request (body, batch) is larger than the server's limits.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", detail)
    }

    pub fn not_found(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, kind, detail)
    }

    fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }

    fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// 500: the details (the error and its sources) go to the log, not to the client.
    fn internal(err: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %error_chain(err), "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; the server log has the details")
    }

    /// 503 with `Retry-After: 1`: the server is busy or warming up; the same request can succeed shortly.
    fn unavailable(kind: &'static str, err: &dyn std::error::Error) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, kind, err.to_string()).retry_after(1)
    }
}

// Every variant is matched by name, so that a new one forces a decision about its status.

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::UnknownModel { ref known, .. } => {
                let known = json!(known);
                ApiError::not_found("unknown-model", err.to_string()).with("known_models", known)
            }
            EngineError::NotReady(_) => ApiError::unavailable("not-ready", &err),
            EngineError::BadDimensions { .. } => ApiError::invalid(err.to_string()),
            // Not retried soon: the model stays failed until the server restarts.
            EngineError::Failed { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "model-failed", err.to_string())
            }
            EngineError::Busy { .. } => ApiError::unavailable("too-many-heavy-searches", &err),
            EngineError::Encoder(err) => err.into(),
            EngineError::Store(err) => err.into(),
            EngineError::StoreDown { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store-unavailable", err.to_string()).retry_after(2)
            }
            EngineError::Index(err) => err.into(),
            EngineError::ModelExists(_) => ApiError::new(StatusCode::CONFLICT, "model-exists", err.to_string()),
            EngineError::OutsideModelRoot { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "outside-model-root", err.to_string())
            }
            EngineError::BadModelPath { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad-model-path", err.to_string())
            }
            EngineError::BadModelName(_) => ApiError::invalid(err.to_string()),
            EngineError::BadModel { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad-model", error_chain(&err))
            }
            EngineError::SameVersion { .. } => ApiError::new(StatusCode::CONFLICT, "same-version", err.to_string()),
            EngineError::ChangeInProgress { .. } => {
                ApiError::new(StatusCode::CONFLICT, "change-in-progress", err.to_string())
            }
            EngineError::NoPrevious { .. } => {
                ApiError::new(StatusCode::CONFLICT, "no-previous-version", err.to_string())
            }
            EngineError::RetireDefault(_) => ApiError::new(StatusCode::CONFLICT, "model-is-default", err.to_string()),
            EngineError::Cancelled(_) => ApiError::new(StatusCode::CONFLICT, "change-abandoned", err.to_string()),
            EngineError::DuplicateModel(_) | EngineError::Task(_) => ApiError::internal(&err),
        }
    }
}

impl From<EncoderError> for ApiError {
    fn from(err: EncoderError) -> Self {
        match err {
            EncoderError::Overloaded { .. } => ApiError::unavailable("overloaded", &err),
            EncoderError::Stopped { .. } => ApiError::unavailable("model-stopped", &err),
            EncoderError::Restarting { .. } => ApiError::unavailable("model-restarting", &err),
            EncoderError::Runtime { .. }
            | EncoderError::Manifest { .. }
            | EncoderError::Load { .. }
            | EncoderError::Tokenize { .. }
            | EncoderError::Inference { .. }
            | EncoderError::Mismatch { .. } => ApiError::internal(&err),
        }
    }
}

impl From<IndexError> for ApiError {
    fn from(err: IndexError) -> Self {
        match err {
            // A model whose vectors do not fit its index is a server fault, not the client's.
            IndexError::Dimension { .. } | IndexError::NonFinite { .. } => ApiError::internal(&err),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::CreateDir { .. }
            | StoreError::Open { .. }
            | StoreError::Read { .. }
            | StoreError::NotADatabase { .. }
            | StoreError::Migrate(_)
            | StoreError::Query(_)
            | StoreError::Corrupt(_) => ApiError::internal(&err),
            // The database is down or unreachable: nothing was committed, and the same request can succeed once
            // it is back (searches are answered from memory meanwhile).
            StoreError::Unavailable(ref source) => {
                tracing::warn!(error = %error_chain(source), "the store is unavailable");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store-unavailable", err.to_string()).retry_after(2)
            }
        }
    }
}

impl From<ExperimentError> for ApiError {
    fn from(err: ExperimentError) -> Self {
        match err {
            ExperimentError::Invalid(_) => ApiError::invalid(err.to_string()),
            // The impression named does not exist: that document was not in that search's results.
            ExperimentError::NotShown { .. } => ApiError::not_found("not-shown", err.to_string()),
            // It exists, and the client's record of it disagrees with the server's.
            ExperimentError::WrongPosition { .. } => {
                ApiError::new(StatusCode::CONFLICT, "wrong-position", err.to_string())
            }
            ExperimentError::NotFound(_) => ApiError::not_found("unknown-experiment", err.to_string()),
            ExperimentError::UnknownArm { .. } => ApiError::not_found("unknown-arm", err.to_string()),
            ExperimentError::DuplicateArm(_) => ApiError::new(StatusCode::CONFLICT, "duplicate-arm", err.to_string()),
            ExperimentError::WeightsNeedAb { .. } => {
                ApiError::new(StatusCode::CONFLICT, "weights-need-ab", err.to_string())
            }
            ExperimentError::UnknownRequest(_) => ApiError::not_found("unknown-request", err.to_string()),
            ExperimentError::NameTaken(_) => ApiError::new(StatusCode::CONFLICT, "name-taken", err.to_string()),
            ExperimentError::Transition { .. } => {
                ApiError::new(StatusCode::CONFLICT, "invalid-transition", err.to_string())
            }
            ExperimentError::ModelInUse { .. } => ApiError::new(StatusCode::CONFLICT, "model-in-use", err.to_string()),
            // Promoting: the experiment is not in a state that allows it, or was promoted before.
            ExperimentError::NotStopped { .. } => ApiError::new(StatusCode::CONFLICT, "not-stopped", err.to_string()),
            ExperimentError::AlreadyPromoted { .. } => {
                ApiError::new(StatusCode::CONFLICT, "already-promoted", err.to_string())
            }
            // The request names a model no arm of this experiment has.
            ExperimentError::NotAnArmModel { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "not-an-arm-model", err.to_string())
            }
            ExperimentError::Store(err) => err.into(),
            ExperimentError::Engine(err) => err.into(),
        }
    }
}

impl From<LiveEvalError> for ApiError {
    fn from(err: LiveEvalError) -> Self {
        match err {
            LiveEvalError::Invalid(_) => ApiError::invalid(err.to_string()),
            LiveEvalError::TooLarge(_) => ApiError::too_large(err.to_string()),
            LiveEvalError::UnknownJob(_) => ApiError::not_found("unknown-eval-job", err.to_string()),
            LiveEvalError::TooManyJobs { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too-many-jobs", err.to_string()).retry_after(10)
            }
            LiveEvalError::Engine(err) => err.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let kind = match rejection {
            JsonRejection::JsonSyntaxError(_) => "malformed-json",
            JsonRejection::JsonDataError(_) => "invalid-request",
            JsonRejection::MissingJsonContentType(_) => "unsupported-media-type",
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => "too-large",
            _ => "bad-request",
        };
        ApiError::new(status, kind, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid-query-string", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid-path", rejection.body_text())
    }
}

fn title(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Error")
}

impl ApiError {
    /// The problem document (also written by the server for answers below the router).
    pub fn document(&self) -> Value {
        let mut body = Map::new();
        body.insert("type".into(), json!(format!("/problems/{}", self.kind)));
        body.insert("title".into(), json!(title(self.status)));
        body.insert("status".into(), json!(self.status.as_u16()));
        body.insert("detail".into(), json!(self.detail));
        body.extend(self.extra.clone());
        Value::Object(body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.document())).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A JSON request body read as the spec defines it, with problems for rejections: the body must be a JSON
/// object (an array is not read as a struct's fields), an integral number is an integer (`5.0` for `k`), and a
/// member's error names its path (`documents[2].id: …`).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(mut value) = axum::Json::<Value>::from_request(request, state).await?;
        if !value.is_object() {
            return Err(ApiError::invalid("the request body must be a JSON object"));
        }
        integral_floats_to_integers(&mut value);
        serde_path_to_error::deserialize(value).map(ApiJson).map_err(|err| {
            ApiError::invalid(format!("Failed to deserialize the JSON body into the target type: {err}"))
        })
    }
}

/// `axum::extract::Query` whose rejections are problems.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `axum::extract::Path` whose rejections are problems.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}
