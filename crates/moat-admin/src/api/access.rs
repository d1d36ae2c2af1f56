//! Users (the password file of `moat user`) and the ACL file, edited with the same checks as
//! their loaders and applied live.

use std::path::PathBuf;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use moat_auth::{EditError, LoadError, Password, PasswordFile};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{blocking, AppState, Body, PathParam};
use crate::error::{ApiError, ApiResult, LineError};

fn password_path(app: &AppState) -> ApiResult<PathBuf> {
    app.config.password_file.clone().ok_or_else(|| {
        ApiError::conflict(
            "no_password_file",
            "the configuration names no password file",
        )
        .fix("set [auth] password_file in moat.toml")
    })
}

fn load_passwords(path: &std::path::Path) -> ApiResult<PasswordFile> {
    match PasswordFile::load(path) {
        Ok(f) => Ok(f),
        Err(e) if e.is_not_found() => Ok(PasswordFile::new()),
        Err(e) => Err(ApiError::conflict("invalid_password_file", e.to_string())
            .fix("fix the file by hand (or `moat user`) first")),
    }
}

fn edit_error(e: EditError) -> ApiError {
    match e {
        EditError::Exists(_) => ApiError::conflict("user_exists", e.to_string()),
        EditError::NotFound(_) => ApiError::not_found("no_user", e.to_string()),
        EditError::InvalidUsername { .. } => {
            ApiError::unprocessable("invalid_username", e.to_string())
        }
        EditError::EmptyPassword => ApiError::unprocessable("invalid_password", e.to_string()),
        other => ApiError::internal(other.to_string()),
    }
}

/// Applies what was just written; a file the broker refuses is a server-side problem.
fn reload(app: &AppState) -> ApiResult<()> {
    app.broker
        .reload_auth_blocking()
        .map_err(|e| ApiError::internal(format!("written, but the broker refused it: {e}")))
}

/// The broker reloads the password file and the ACL file together, so an edit of one is
/// refused (409, nothing written) while the other one, edited by hand, does not load: else the
/// edit would be written but not applied.
fn check_password_file(app: &AppState) -> ApiResult<()> {
    match &app.config.password_file {
        Some(path) => load_passwords(path).map(drop),
        None => Ok(()),
    }
}

fn check_acl_file(app: &AppState) -> ApiResult<()> {
    let Some(path) = &app.config.acl_file else {
        return Ok(());
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(ApiError::internal(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    moat_auth::Acl::parse(&text, path).map(drop).map_err(|e| {
        ApiError::conflict("invalid_acl_file", e.to_string())
            .fix("fix the ACL file first (PUT /api/v1/acl, or by hand)")
    })
}

#[derive(Serialize)]
pub(crate) struct UserView {
    username: String,
    scheme: &'static str,
}

pub(crate) async fn users(State(app): State<AppState>) -> ApiResult<Json<Vec<UserView>>> {
    let path = password_path(&app)?;
    let file = blocking(move || load_passwords(&path)).await??;
    Ok(Json(
        file.users()
            .map(|(u, scheme)| UserView {
                username: u.to_owned(),
                scheme: scheme.name(),
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
pub(crate) struct NewUser {
    username: String,
    password: Zeroizing<String>,
}

#[derive(Deserialize)]
pub(crate) struct NewPassword {
    password: Zeroizing<String>,
}

/// Loads, edits, saves (atomically, 0600) and reloads the password file, one edit at a time.
async fn edit_users(
    app: &AppState,
    edit: impl FnOnce(&mut PasswordFile) -> Result<(), EditError> + Send + 'static,
) -> ApiResult<()> {
    let path = password_path(app)?;
    let _one_at_a_time = app.auth_files.lock().await;
    let app2 = app.clone();
    blocking(move || {
        let mut file = load_passwords(&path)?;
        check_acl_file(&app2)?;
        edit(&mut file).map_err(edit_error)?;
        file.save(&path)
            .map_err(|e| ApiError::internal(format!("cannot write {}: {e}", path.display())))?;
        reload(&app2)
    })
    .await?
}

fn password(text: &Zeroizing<String>) -> ApiResult<Password> {
    if text.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_password",
            "the password is empty",
        ));
    }
    if text.len() > 1024 {
        return Err(ApiError::unprocessable(
            "invalid_password",
            "the password is longer than 1024 bytes",
        ));
    }
    Ok(Password::new(text.as_bytes().to_vec()))
}

pub(crate) async fn add_user(
    State(app): State<AppState>,
    Body(new): Body<NewUser>,
) -> ApiResult<StatusCode> {
    moat_auth::validate_username(&new.username).map_err(edit_error)?;
    let pw = password(&new.password)?;
    edit_users(&app, move |f| f.add(&new.username, &pw)).await?;
    Ok(StatusCode::CREATED)
}

pub(crate) async fn set_password(
    State(app): State<AppState>,
    PathParam(username): PathParam,
    Body(new): Body<NewPassword>,
) -> ApiResult<StatusCode> {
    let pw = password(&new.password)?;
    edit_users(&app, move |f| f.set_password(&username, &pw)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn remove_user(
    State(app): State<AppState>,
    PathParam(username): PathParam,
) -> ApiResult<StatusCode> {
    edit_users(&app, move |f| f.remove(&username)).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn acl_path(app: &AppState) -> ApiResult<PathBuf> {
    app.config.acl_file.clone().ok_or_else(|| {
        ApiError::conflict("no_acl_file", "the configuration names no ACL file")
            .fix("set [auth] acl_file in moat.toml (every authenticated client may use every topic until then)")
    })
}

#[derive(Serialize)]
pub(crate) struct AclView {
    path: String,
    text: String,
    rules: usize,
}

pub(crate) async fn acl(State(app): State<AppState>) -> ApiResult<Json<AclView>> {
    let path = acl_path(&app)?;
    blocking(move || {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(ApiError::internal(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        let rules = moat_auth::Acl::parse(&text, &path).map_or(0, |a| a.rule_count());
        Ok(Json(AclView {
            path: path.display().to_string(),
            text,
            rules,
        }))
    })
    .await?
}

#[derive(Deserialize)]
pub(crate) struct AclText {
    text: String,
}

#[derive(Serialize)]
pub(crate) struct AclSaved {
    rules: usize,
}

/// ACL text at most.
const MAX_ACL: usize = 1024 * 1024;

pub(crate) async fn put_acl(
    State(app): State<AppState>,
    Body(body): Body<AclText>,
) -> ApiResult<Json<AclSaved>> {
    let path = acl_path(&app)?;
    if body.text.len() > MAX_ACL {
        return Err(ApiError::unprocessable(
            "invalid_acl",
            "the ACL is larger than 1 MiB",
        ));
    }
    let _one_at_a_time = app.auth_files.lock().await;
    let app2 = app.clone();
    blocking(move || {
        let acl = moat_auth::Acl::parse(&body.text, &path).map_err(|e| {
            let (line, message) = match &e {
                LoadError::Invalid { line, reason, .. } => (*line, reason.clone()),
                other => (0, other.to_string()),
            };
            let mut err = ApiError::unprocessable("invalid_acl", format!("line {line}: {message}"))
                .fix("correct that line; nothing was written and the ACL in force is unchanged");
            err.errors = Some(vec![LineError { line, message }]);
            err
        })?;
        check_password_file(&app2)?;
        let previous = match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(ApiError::internal(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        moat_pki::store::replace_file(&path, body.text.as_bytes(), false)
            .map_err(|e| ApiError::internal(format!("cannot write {}: {e}", path.display())))?;
        if let Err(e) = reload(&app2) {
            // Not applied: the file goes back to what is in force.
            if let Some(bytes) = previous {
                let _ = moat_pki::store::replace_file(&path, &bytes, false);
            }
            return Err(e);
        }
        Ok(Json(AclSaved {
            rules: acl.rule_count(),
        }))
    })
    .await?
}
