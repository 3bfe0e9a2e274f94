//! Checking a database connection string before anything connects with it.
//!
//! A string tokio-postgres cannot parse never works, so the exchange
//! refuses it at start (a configuration error) instead of retrying it for
//! ever. The reason must not echo the password: tokio-postgres quotes an
//! unknown option's name, which may be a piece of a mistyped password.

use std::str::FromStr;

/// Parses `url` as tokio-postgres does (URL or key=value form). The error
/// says what is wrong without any part of the password.
pub fn check(url: &str) -> Result<(), String> {
    let error = match tokio_postgres::Config::from_str(url) {
        Ok(_) => return Ok(()),
        Err(error) => crate::tables::describe(&error),
    };
    if secret_words(url).iter().any(|word| error.contains(word.as_str())) {
        return Err("it is not a valid connection string (the parser's reason would show part of the \
                    password, so it is withheld); check the quoting and spaces around password="
            .to_string());
    }
    Err(format!("it is not a valid connection string: {error}"))
}

/// Words that may belong to a password: everything after `password=` (a
/// mistyped value may run into what follows) and the `user:password@` of
/// a URL. Words of fewer than three characters are too common in error
/// messages to tell anything.
fn secret_words(url: &str) -> Vec<String> {
    let mut regions = Vec::new();
    if let Some(at) = url.find("password=") {
        regions.push(&url[at + "password=".len()..]);
    }
    if let Some(rest) = url.split_once("://").map(|(_, rest)| rest) {
        if let Some((authority, _)) = rest.rsplit_once('@') {
            if let Some((_, password)) = authority.split_once(':') {
                regions.push(password);
            }
        }
    }
    regions
        .iter()
        .flat_map(|region| region.split(|c: char| c.is_whitespace() || "='\"@:/?&".contains(c)))
        .filter(|word| word.chars().count() >= 3)
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn good_strings_pass_in_either_form() {
        assert_eq!(check("host=127.0.0.1 port=5432 user=exchange dbname=exchange"), Ok(()));
        assert_eq!(check("postgres://exchange:secret@127.0.0.1:5432/exchange"), Ok(()));
    }

    #[test]
    fn a_bad_string_says_why() {
        let error = check("host=127.0.0.1 port=notaport").unwrap_err();
        assert!(error.contains("port"), "{error}");
        let error = check("postgres://u@127.0.0.1:notaport/db").unwrap_err();
        assert!(error.contains("not a valid connection string"), "{error}");
    }

    #[test]
    fn the_reason_never_shows_the_password() {
        // An unquoted space splits the password; its second half is taken
        // for an option whose name tokio-postgres would quote.
        for url in [
            "host=127.0.0.1 user=u password=hunter two=1",
            "host=127.0.0.1 user=u password='unterminated hunter2",
            "postgres://u:hunter2@127.0.0.1:notaport/db",
            "postgres://u:hunter2@127.0.0.1/db?hunter2=1",
        ] {
            let error = check(url).unwrap_err();
            assert!(!error.contains("hunter") && !error.contains("two"), "{url}: {error}");
        }
    }
}
