//! Pages of a query with the count of the whole query (contract 1.3).

use abi_stable::std_types::{RResult, RStr, RString};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, value::RawValue};

use crate::{
    DbError, Host,
    db::{decode_error, encode, other},
};

/// One page of a query's rows, and how many rows the whole query has.
#[derive(Debug, Clone, Deserialize)]
pub struct Page<T> {
    /// The page's rows.
    pub rows: T,
    /// The rows of the whole query.
    pub total: i64,
}

/// The name of the count column a paged statement adds.
pub const PAGE_TOTAL: &str = "plughost_total";

/// The statements of a page of `sql` ordered by `order_by`, as the host,
/// the test host and a plugin on an older host write them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSql {
    /// The page with the whole query's count as its last column
    /// ([`PAGE_TOTAL`]); `LIMIT ? OFFSET ?` follow the query's parameters.
    pub counted: String,
    /// The page alone.
    pub plain: String,
    /// The count alone (for a page past the end, which has no rows to
    /// carry it).
    pub count: String,
}

impl PageSql {
    /// The statements for `sql` (a `SELECT` without `ORDER BY` or `LIMIT`)
    /// ordered by `order_by` (the query's column names; empty for none).
    /// The order is applied outside the query, where every backend keeps
    /// it (MariaDB drops an `ORDER BY` inside a derived table).
    pub fn new(sql: &str, order_by: &str) -> Self {
        let sql = sql.trim().trim_end_matches(';');
        let order = match order_by.trim() {
            "" => String::new(),
            order => format!(" ORDER BY {order}"),
        };
        Self {
            counted: format!(
                "SELECT q.*, COUNT(*) OVER () AS {PAGE_TOTAL} FROM ({sql}) q{order} LIMIT ? OFFSET ?"
            ),
            plain: format!("SELECT q.* FROM ({sql}) q{order} LIMIT ? OFFSET ?"),
            count: format!("SELECT COUNT(*) AS total FROM ({sql}) q"),
        }
    }
}

impl Host {
    /// Runs one page of a query and counts the rows of the whole query;
    /// the rows as the host's JSON text, to pass on into a response.
    ///
    /// `sql` is a `SELECT` without `ORDER BY` or `LIMIT`, with `?`
    /// placeholders bound to `params`; `order_by` orders the page by the
    /// query's column names (`"id DESC"`; empty for none). The page and the
    /// count take one statement (one round trip) when the page has rows.
    /// On a host older than plugin-api 1.3 they take two.
    ///
    /// ```ignore
    /// let page = host()
    ///     .query_page_raw("SELECT id, name FROM note WHERE owner = ?", "id", &[json!(owner)], 20, 0)
    ///     .await?;
    /// // page.rows: [{"id": 1, "name": "…"}, …], page.total: 42
    /// ```
    pub async fn query_page_raw(
        &self,
        sql: &str,
        order_by: &str,
        params: &[Value],
        limit: u64,
        offset: u64,
    ) -> Result<Page<Box<RawValue>>, DbError> {
        let Some(page) = self.services().sql_page() else {
            return self.page_in_two(sql, order_by, params, limit, offset).await;
        };
        let answer = page(
            RStr::from(self.plugin()),
            0,
            RString::from(sql),
            RString::from(order_by),
            encode(params),
            limit,
            offset,
        )
        .await;
        match answer {
            RResult::ROk(text) => serde_json::from_str(&text).map_err(|e| other(e.to_string())),
            RResult::RErr(e) => Err(decode_error(e)),
        }
    }

    /// [`query_page_raw`](Self::query_page_raw) with the rows deserialized
    /// into `T`.
    pub async fn query_page<T: DeserializeOwned>(
        &self,
        sql: &str,
        order_by: &str,
        params: &[Value],
        limit: u64,
        offset: u64,
    ) -> Result<Page<Vec<T>>, DbError> {
        let page = self
            .query_page_raw(sql, order_by, params, limit, offset)
            .await?;
        Ok(Page {
            rows: serde_json::from_str(page.rows.get()).map_err(|e| other(e.to_string()))?,
            total: page.total,
        })
    }

    /// A page and its count as two queries, on a host without `sql_page`.
    async fn page_in_two(
        &self,
        sql: &str,
        order_by: &str,
        params: &[Value],
        limit: u64,
        offset: u64,
    ) -> Result<Page<Box<RawValue>>, DbError> {
        let statements = PageSql::new(sql, order_by);
        let counted = self.query_json(&statements.count, params).await?;
        let total = counted
            .first()
            .and_then(|row| row["total"].as_i64())
            .unwrap_or(0);
        let mut bound = params.to_vec();
        bound.extend([Value::from(limit), Value::from(offset)]);
        let rows = self.query_raw(&statements.plain, &bound).await?;
        Ok(Page { rows, total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_goes_outside_the_query_and_the_count_is_the_last_column() {
        let sql = PageSql::new("SELECT id, name FROM t WHERE a = ?;", "id DESC");
        assert_eq!(
            sql.counted,
            "SELECT q.*, COUNT(*) OVER () AS plughost_total FROM (SELECT id, name FROM t WHERE a = ?) q ORDER BY id DESC LIMIT ? OFFSET ?"
        );
        assert_eq!(
            sql.plain,
            "SELECT q.* FROM (SELECT id, name FROM t WHERE a = ?) q ORDER BY id DESC LIMIT ? OFFSET ?"
        );
        assert_eq!(
            sql.count,
            "SELECT COUNT(*) AS total FROM (SELECT id, name FROM t WHERE a = ?) q"
        );
        assert!(!PageSql::new("SELECT 1", " ").counted.contains("ORDER BY"));
    }
}
