//! Session recordings, one home: how events are encoded ([`format`](mod@format)), where they
//! are kept ([`place`]: this node's `data/recordings`, a directory every node mounts, or
//! object storage through [`remote`], which [`upload`] fills from this node's spool), the
//! file each session's events go to and how it is sealed, checked and followed ([`files`]), the
//! bastion's writer that records off the data path ([`writer`]), and what reviewers get out
//! of them: exports and playback ([`export`]), search ([`search`]), deletion for retention ([`removal`]), command timelines
//! ([`timeline`], typed lines read off an emulated terminal: [`typed`]) and terminal screens for the browser ([`screen`]). A recording stores raw
//! bytes as they crossed the channel: search strips escape sequences from the text, the
//! screens emulate a terminal to render them.

pub mod export;
pub mod files;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod format;
pub mod place;
pub mod remote;
pub mod removal;
pub mod screen;
pub mod search;
pub mod timeline;
pub mod typed;
pub mod upload;
pub mod writer;
