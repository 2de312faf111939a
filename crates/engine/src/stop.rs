//! Stop strings over streamed text. Text that might be the start of a stop string is held back
//! until the next pieces show whether it is one, so a caller never sees part of a stop string
//! and never has to take text back.

/// What to do with the text generated so far but not yet shown.
#[derive(Debug, PartialEq, Eq)]
pub enum StopCheck {
    /// A stop string begins at this byte offset of the pending text: show what is before it, end.
    Stop(usize),
    /// Show the first `n` bytes; the rest could still become a stop string.
    Emit(usize),
}

#[derive(Clone, Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
}

impl StopStrings {
    pub fn new(stops: impl IntoIterator<Item = String>) -> StopStrings {
        StopStrings { stops: stops.into_iter().filter(|s| !s.is_empty()).collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// The stop string that [`StopStrings::check`] found at byte `at` of `pending`.
    pub fn found_at(&self, pending: &str, at: usize) -> Option<&str> {
        self.stops.iter().find(|s| pending.find(s.as_str()) == Some(at)).map(String::as_str)
    }

    /// Checks `pending`, the text not yet shown (a stop string can only begin inside it, since
    /// everything shown before was checked not to be one's start).
    pub fn check(&self, pending: &str) -> StopCheck {
        let first_stop = self.stops.iter().filter_map(|s| pending.find(s.as_str())).min();
        if let Some(at) = first_stop {
            return StopCheck::Stop(at);
        }
        // The longest tail of `pending` that is a proper prefix of some stop string.
        let held = self
            .stops
            .iter()
            .map(|stop| {
                (1..stop.len().min(pending.len() + 1))
                    .rev()
                    .find(|&n| stop.is_char_boundary(n) && pending.ends_with(&stop[..n]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        StopCheck::Emit(pending.len() - held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(s: &[&str]) -> StopStrings {
        StopStrings::new(s.iter().map(|s| s.to_string()))
    }

    #[test]
    fn holds_back_a_possible_start_and_releases_it_when_it_is_not() {
        let s = stops(&["\nUser:"]);
        assert_eq!(s.check("Hello\nUs"), StopCheck::Emit(5));
        assert_eq!(s.check("Hello\nUsually"), StopCheck::Emit(13));
        assert_eq!(s.check("Hello\nUser: hi"), StopCheck::Stop(5));
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        let s = stops(&["END", "##"]);
        assert_eq!(s.check("a ## b END"), StopCheck::Stop(2));
        assert_eq!(s.check("a #"), StopCheck::Emit(2));
    }

    #[test]
    fn multibyte_stop_strings_are_held_on_character_boundaries() {
        let s = stops(&["问："]);
        assert_eq!(s.check("好的问"), StopCheck::Emit("好的".len()));
        assert_eq!(s.check("好的问：x"), StopCheck::Stop("好的".len()));
    }

    #[test]
    fn no_stops_emit_everything() {
        assert_eq!(stops(&[]).check("anything"), StopCheck::Emit(8));
        assert!(stops(&[""]).is_empty());
    }
}
