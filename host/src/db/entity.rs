//! The host's tables, as sea-orm entities.

/// `sys_user`: accounts that can log in.
pub mod user {
    use sea_orm::entity::prelude::*;

    /// One account.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sys_user")]
    pub struct Model {
        /// Id (assigned by the database, or a snowflake id set by the host).
        #[sea_orm(primary_key)]
        pub id: i64,
        /// Login name, unique.
        pub username: String,
        /// argon2 PHC string.
        pub password_hash: String,
        /// Passes every permission check.
        pub is_superuser: bool,
        /// 1 active, 0 disabled.
        pub status: i16,
        /// Grows on every password change; tokens carry the one they were
        /// issued under.
        pub token_version: i64,
        /// Display name.
        pub nickname: Option<String>,
        /// Mail address.
        pub email: Option<String>,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `sys_role`: named sets of permissions.
pub mod role {
    use sea_orm::entity::prelude::*;

    /// One role.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sys_role")]
    pub struct Model {
        /// Id (assigned by the database, or a snowflake id set by the host).
        #[sea_orm(primary_key)]
        pub id: i64,
        /// Name, unique.
        pub name: String,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `sys_role_permission`: the permission strings of a role.
pub mod role_permission {
    use sea_orm::entity::prelude::*;

    /// One permission of one role.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sys_role_permission")]
    pub struct Model {
        /// The role.
        #[sea_orm(primary_key, auto_increment = false)]
        pub role_id: i64,
        /// The permission string (`sys:dict:add` …).
        #[sea_orm(primary_key, auto_increment = false)]
        pub permission: String,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `sys_user_role`: which user holds which role.
pub mod user_role {
    use sea_orm::entity::prelude::*;

    /// One role of one user.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sys_user_role")]
    pub struct Model {
        /// The user.
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: i64,
        /// The role.
        #[sea_orm(primary_key, auto_increment = false)]
        pub role_id: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `sys_token_revocation`: tokens logged out before they expire.
pub mod token_revocation {
    use sea_orm::entity::prelude::*;

    /// One revoked token.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sys_token_revocation")]
    pub struct Model {
        /// The token's id (`jti` claim).
        #[sea_orm(primary_key, auto_increment = false)]
        pub jti: String,
        /// When the token would have expired (Unix seconds); later rows can go.
        pub expires_at: i64,
    }

    /// No relations are navigated through the ORM.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
