//! The benchmark's reference for `GET /admin/v1/sys/dict-types?page=&size=`:
//! the same three statements the `dict` plugin's route costs (the admin
//! guard's principal query, the count, the page), run with the drivers'
//! own prepared statements and no ORM, answering the same JSON. It checks
//! the bearer token like the host's admin guard (HS256 with the host's
//! secret, expiry; an active user, the token neither revoked nor older
//! than the user's token version); the list needs no permission.
//!
//! usage: dict-reference BIND DATABASE_URL (postgres:// or mysql://),
//! with PLUGHOST_JWT_SECRET set to the host's secret. One worker, like the
//! host under the benchmark.

use std::sync::atomic::{AtomicUsize, Ordering};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

const PRINCIPAL: &str = "SELECT u.username, u.is_superuser, u.token_version, rp.permission, \
     (SELECT COUNT(*) FROM sys_token_revocation r WHERE r.jti = $1) AS revoked \
     FROM sys_user u \
     LEFT JOIN sys_user_role ur ON ur.user_id = u.id \
     LEFT JOIN sys_role_permission rp ON rp.role_id = ur.role_id \
     WHERE u.id = $2 AND u.status = 1";
const COUNT: &str = "SELECT COUNT(*) AS total FROM sys_dict_type";
const PAGE: &str =
    "SELECT id, name, code, status, remark FROM sys_dict_type ORDER BY id LIMIT $1 OFFSET $2";

/// Connections kept open: as many as the host's pool holds.
const CONNECTIONS: usize = 16;

#[derive(Deserialize)]
struct Claims {
    sub: String,
    jti: String,
    #[serde(default)]
    ver: i64,
}

#[derive(Serialize)]
struct Row {
    id: i64,
    name: String,
    code: String,
    status: i64,
    remark: Option<String>,
}

#[derive(Serialize)]
struct Page {
    items: Vec<Row>,
    total: i64,
    page: u64,
    size: u64,
}

#[derive(Serialize)]
struct Envelope<T> {
    code: u16,
    msg: &'static str,
    data: T,
}

#[derive(Deserialize)]
struct PageQuery {
    page: Option<u64>,
    size: Option<u64>,
}

/// A PostgreSQL connection with its statements prepared once.
struct PgConn {
    client: tokio_postgres::Client,
    principal: tokio_postgres::Statement,
    count: tokio_postgres::Statement,
    page: tokio_postgres::Statement,
}

enum Store {
    /// tokio-postgres clients, taken in turn (a client pipelines the
    /// queries of concurrent requests).
    Postgres(Vec<PgConn>, AtomicUsize),
    /// sqlx's MySQL pool (it prepares and caches statements per connection).
    Mysql(sqlx::MySqlPool, MysqlSql),
}

struct State {
    store: Store,
    key: DecodingKey,
    validation: Validation,
}

fn error(status: u16, msg: &'static str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("a status"))
        .json(serde_json::json!({ "code": status, "msg": msg, "data": null }))
}

/// Whether the principal rows allow the caller in: an active user whose
/// token is neither revoked nor older than their token version.
fn admitted(first: Option<(i64, i64)>, token_version: i64) -> bool {
    matches!(first, Some((revoked, current)) if revoked == 0 && token_version >= current)
}

async fn list(state: web::Data<State>, req: HttpRequest) -> HttpResponse {
    let Some(token) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return error(401, "missing token");
    };
    let Ok(token) = jsonwebtoken::decode::<Claims>(token, &state.key, &state.validation) else {
        return error(401, "invalid token");
    };
    let claims = token.claims;
    let Ok(user_id) = claims.sub.parse::<i64>() else {
        return error(401, "bad subject");
    };
    let Ok(q) = serde_urlencoded::from_str::<PageQuery>(req.query_string()) else {
        return error(422, "page and size must be integers");
    };
    let (page, size) = (
        q.page.unwrap_or(1).max(1),
        q.size.unwrap_or(20).clamp(1, 200),
    );
    let limit = i64::try_from(size).unwrap_or(20);
    let offset = i64::try_from((page - 1) * size).unwrap_or(0);
    let answer = match &state.store {
        Store::Postgres(conns, next) => {
            let c = &conns[next.fetch_add(1, Ordering::Relaxed) % conns.len()];
            pg_list(c, &claims, user_id, limit, offset)
                .await
                .map_err(|e| e.to_string())
        }
        Store::Mysql(pool, sql) => mysql_list(pool, sql, &claims, user_id, limit, offset)
            .await
            .map_err(|e| e.to_string()),
    };
    match answer {
        Ok(Some((items, total))) => HttpResponse::Ok().json(Envelope {
            code: 200,
            msg: "Request success",
            data: Page {
                items,
                total,
                page,
                size,
            },
        }),
        Ok(None) => error(401, "token refused"),
        Err(e) => {
            eprintln!("dict-reference: {e}");
            error(500, "database error")
        }
    }
}

type Listed = Option<(Vec<Row>, i64)>;

async fn pg_list(
    c: &PgConn,
    claims: &Claims,
    user_id: i64,
    limit: i64,
    offset: i64,
) -> Result<Listed, tokio_postgres::Error> {
    let rows = c
        .client
        .query(&c.principal, &[&claims.jti, &user_id])
        .await?;
    let first = rows
        .first()
        .map(|r| (r.get::<_, i64>("revoked"), r.get::<_, i64>("token_version")));
    if !admitted(first, claims.ver) {
        return Ok(None);
    }
    let total: i64 = c.client.query_one(&c.count, &[]).await?.get("total");
    let items = c
        .client
        .query(&c.page, &[&limit, &offset])
        .await?
        .iter()
        .map(|r| Row {
            id: r.get("id"),
            name: r.get("name"),
            code: r.get("code"),
            status: i64::from(r.get::<_, i16>("status")),
            remark: r.get("remark"),
        })
        .collect();
    Ok(Some((items, total)))
}

/// `sql` with MySQL's `?` placeholders instead of `$1`, `$2`…
fn mysql_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' {
            out.push('?');
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The statements in MySQL's placeholders, written once.
struct MysqlSql {
    principal: String,
    page: String,
}

async fn mysql_list(
    pool: &sqlx::MySqlPool,
    sql: &MysqlSql,
    claims: &Claims,
    user_id: i64,
    limit: i64,
    offset: i64,
) -> Result<Listed, sqlx::Error> {
    use sqlx::Row as _;
    let rows = sqlx::query(&sql.principal)
        .bind(&claims.jti)
        .bind(user_id)
        .fetch_all(pool)
        .await?;
    let first = match rows.first() {
        Some(r) => Some((
            r.try_get::<i64, _>("revoked")?,
            r.try_get::<i64, _>("token_version")?,
        )),
        None => None,
    };
    if !admitted(first, claims.ver) {
        return Ok(None);
    }
    let total: i64 = sqlx::query(COUNT).fetch_one(pool).await?.try_get("total")?;
    let items = sqlx::query(&sql.page)
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok(Row {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                code: r.try_get("code")?,
                status: i64::from(r.try_get::<i16, _>("status")?),
                remark: r.try_get("remark")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    Ok(Some((items, total)))
}

async fn open(url: &str) -> Result<Store, Box<dyn std::error::Error>> {
    if url.starts_with("mysql://") {
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(u32::try_from(CONNECTIONS)?)
            .test_before_acquire(false)
            .connect(url)
            .await?;
        let sql = MysqlSql {
            principal: mysql_placeholders(PRINCIPAL),
            page: mysql_placeholders(PAGE),
        };
        return Ok(Store::Mysql(pool, sql));
    }
    let mut conns = Vec::new();
    for _ in 0..CONNECTIONS {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        actix_web::rt::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("dict-reference: connection: {e}");
            }
        });
        conns.push(PgConn {
            principal: client.prepare(PRINCIPAL).await?,
            count: client.prepare(COUNT).await?,
            page: client.prepare(PAGE).await?,
            client,
        });
    }
    Ok(Store::Postgres(conns, AtomicUsize::new(0)))
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(bind), Some(url)) = (args.next(), args.next()) else {
        return Err(
            "usage: dict-reference BIND DATABASE_URL (with PLUGHOST_JWT_SECRET set)".into(),
        );
    };
    let secret = std::env::var("PLUGHOST_JWT_SECRET")
        .map_err(|_| "set PLUGHOST_JWT_SECRET to the host's token secret")?;
    let store = open(&url).await?;
    let state = web::Data::new(State {
        store,
        key: DecodingKey::from_secret(secret.as_bytes()),
        validation: Validation::new(Algorithm::HS256),
    });
    HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/admin/v1/sys/dict-types", web::get().to(list))
    })
    .workers(1)
    .bind(bind)?
    .run()
    .await?;
    Ok(())
}
