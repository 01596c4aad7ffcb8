//! Newtype ids. CRM entity ids are integers in both amoCRM and Bitrix24 (Bitrix24 sends them as
//! strings; the connector parses them). Stage ids are strings because Bitrix24 stages are codes
//! such as `C2:PREPARATION`; amoCRM status ids are rendered as their decimal text.
use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! int_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                Self(v)
            }
        }
    };
}

int_id!(
    /// Id of a contact (a person).
    ContactId
);
int_id!(
    /// Id of a company.
    CompanyId
);
int_id!(
    /// Id of a deal (amoCRM: lead).
    DealId
);
int_id!(
    /// Id of a pipeline (amoCRM) or deal category (Bitrix24; the default category is 0).
    PipelineId
);
int_id!(
    /// Id of a CRM user (manager).
    UserId
);
int_id!(
    /// Id of a task or to-do created in the CRM.
    TaskId
);

/// Id of a pipeline stage: amoCRM status id as text (`"142"`), Bitrix24 stage code (`"C2:WON"`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StageId(pub String);

impl fmt::Display for StageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for StageId {
    fn from(v: &str) -> Self {
        Self(v.to_owned())
    }
}

/// Id of a portal: one CRM account configured in rebuy (`[[portal]] id = "..."`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PortalId(pub String);

impl fmt::Display for PortalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for PortalId {
    fn from(v: &str) -> Self {
        Self(v.to_owned())
    }
}
