//! Which of a client's messages end a batch that the server answers with a
//! ReadyForQuery: a Query, a FunctionCall, and a Sync — unless the server
//! receives that Sync in copy-in mode, where it ignores it. Syncs a client
//! sends after a COPY's Execute, before the server's CopyInResponse has
//! arrived, turn out to be ignored only when that response comes. A copy
//! the server gives up on (an ErrorResponse, then its ReadyForQuery) ends
//! copy-in mode too: the client may then skip CopyDone and CopyFail.

/// Follows a client's batch ends as its server will see them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchEnds {
    /// Syncs sent since the last Execute and before a CopyDone/CopyFail: if
    /// that Execute starts a COPY FROM STDIN, the server ignores them
    syncs_in_copy: usize,
    /// the client ended a copy since its last Execute or Query
    copy_ended: bool,
    /// a Sync followed that end of the copy (the server answers it)
    synced_after_copy_end: bool,
    /// the server is in copy-in mode (it ignores Sync) until the client
    /// sends CopyDone or CopyFail, or the server ends the copy itself
    copy_in: bool,
}

impl BatchEnds {
    /// A client message on its way to the server: true when it ends a
    /// batch the server will answer with a ReadyForQuery.
    #[inline]
    pub fn client_sent(&mut self, tag: u8) -> bool {
        match tag {
            b'F' => true,
            b'Q' => {
                // a COPY it runs starts afresh: Syncs before it are not in
                // its copy-in mode
                self.syncs_in_copy = 0;
                self.copy_ended = false;
                self.synced_after_copy_end = false;
                true
            }
            b'S' if self.copy_in => false,
            b'S' => {
                if self.copy_ended {
                    self.synced_after_copy_end = true;
                } else {
                    self.syncs_in_copy += 1;
                }
                true
            }
            b'E' => {
                self.syncs_in_copy = 0;
                self.copy_ended = false;
                self.synced_after_copy_end = false;
                false
            }
            b'c' | b'f' => {
                if self.copy_in {
                    self.copy_in = false;
                } else {
                    self.copy_ended = true;
                    self.synced_after_copy_end = false;
                }
                false
            }
            _ => false,
        }
    }

    /// True while the server is in copy-in mode and the client has not
    /// ended the copy.
    pub fn awaiting_copy_data(&self) -> bool {
        self.copy_in
    }

    /// True when the client has already ended the copy that is starting
    /// and sent a Sync after that end: the server answers that Sync, and
    /// needs no other after the copy. (Ask before [`Self::copy_in_started`].)
    pub fn synced_after_copy(&self) -> bool {
        self.copy_ended && self.synced_after_copy_end
    }

    /// CopyInResponse: returns how many of the batch ends already counted
    /// the server ignores (Syncs sent since the COPY's Execute).
    #[cold]
    pub fn copy_in_started(&mut self) -> usize {
        if !self.copy_ended {
            self.copy_in = true;
        }
        std::mem::take(&mut self.syncs_in_copy)
    }

    /// A server message that a server in copy-in mode sends only once it
    /// has left that mode: an ErrorResponse (the copy failed) or a
    /// ReadyForQuery. After a failed COPY the client need not send
    /// CopyDone or CopyFail (libpq does not once it has seen the error),
    /// and its next Sync is answered again.
    #[inline]
    pub fn server_sent(&mut self, tag: u8) {
        if matches!(tag, b'E' | b'Z') {
            self.copy_in = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_sent_into_a_copy_end_no_batch() {
        let mut b = BatchEnds::default();
        // libpq's extended-protocol COPY: Execute and Sync, then the data,
        // CopyDone and another Sync
        assert!(!b.client_sent(b'E'));
        assert!(b.client_sent(b'S'));
        assert_eq!(b.copy_in_started(), 1, "that Sync was ignored");
        assert!(!b.client_sent(b'S'), "ignored in copy-in mode");
        assert!(!b.client_sent(b'c'));
        assert!(b.client_sent(b'S'));
        // a simple-query COPY keeps its own ReadyForQuery
        assert!(b.client_sent(b'Q'));
        assert_eq!(b.copy_in_started(), 0);
        assert!(!b.client_sent(b'c'));
        // the client ended the copy before the server's response came
        assert!(!b.client_sent(b'E'));
        assert!(!b.client_sent(b'c'));
        assert!(b.client_sent(b'S'));
        assert_eq!(b.copy_in_started(), 0);
        assert!(b.client_sent(b'S'), "not in copy-in mode");
    }

    #[test]
    fn a_copy_the_server_failed_ends_copy_in_mode_without_copy_done() {
        let mut b = BatchEnds::default();
        // a simple-query COPY FROM STDIN whose data the server rejects:
        // ErrorResponse and ReadyForQuery, and the client sends no CopyDone
        assert!(b.client_sent(b'Q'));
        assert_eq!(b.copy_in_started(), 0);
        assert!(!b.client_sent(b'd'));
        b.server_sent(b'E');
        b.server_sent(b'Z');
        // the client's next extended-protocol batch is answered
        assert!(!b.client_sent(b'P'));
        assert!(!b.client_sent(b'E'));
        assert!(b.client_sent(b'S'), "the server answers this Sync");
        // an extended-protocol COPY that fails: the Sync after the error
        // (with or without CopyDone) is answered
        assert!(!b.client_sent(b'E'));
        assert!(b.client_sent(b'S'));
        assert_eq!(b.copy_in_started(), 1);
        b.server_sent(b'E');
        assert!(b.client_sent(b'S'), "the server discards up to this Sync");
    }
}
