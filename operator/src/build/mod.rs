//! The NodeImage build controller: decisions in [`decide`] (pure, over what [`observe`] gathers), Jobs in [`job`],
//! the registry edge in [`registry`], execution in [`controller`].

pub mod conditions;
pub mod controller;
pub mod decide;
pub mod job;
pub mod observe;
pub mod registry;
