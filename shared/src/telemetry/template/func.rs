//! The predefined functions of Go's `text/template` (the ones a request log can use).

/// A predefined function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Func {
    And,
    Or,
    Not,
    Len,
    Index,
    Slice,
    Print,
    Printf,
    Println,
    Html,
    Js,
    Urlquery,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// Parses (it is predefined) but fails when run: no value here is a function.
    Call,
}

impl Func {
    /// The function named `name`, if Go predefines it.
    pub(super) fn lookup(name: &str) -> Option<Self> {
        Some(match name {
            "and" => Self::And,
            "or" => Self::Or,
            "not" => Self::Not,
            "len" => Self::Len,
            "index" => Self::Index,
            "slice" => Self::Slice,
            "print" => Self::Print,
            "printf" => Self::Printf,
            "println" => Self::Println,
            "html" => Self::Html,
            "js" => Self::Js,
            "urlquery" => Self::Urlquery,
            "eq" => Self::Eq,
            "ne" => Self::Ne,
            "lt" => Self::Lt,
            "le" => Self::Le,
            "gt" => Self::Gt,
            "ge" => Self::Ge,
            "call" => Self::Call,
            _ => return None,
        })
    }
}
