//! Money: integer minor units of an ISO 4217 currency. No floats anywhere.
//!
//! The number of minor-unit digits is ISO 4217's, except where Stripe counts differently
//! (reference/stripe.md §7): ISK is sent in hundredths although ISO gives it none.

use std::fmt;

/// A currency kommo-pay can charge in: a known ISO 4217 code with a decimal minor unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency(iso_currency::Currency);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("{0:?} is not a known ISO 4217 currency code")]
    UnknownCurrency(String),
    #[error("{0:?} is not an amount: use digits with at most one decimal point, e.g. 2000.50")]
    NotAnAmount(String),
    #[error("{amount} has more decimals than {currency} allows ({exponent})")]
    TooPrecise { amount: String, currency: Currency, exponent: u32 },
    #[error("the amount must be positive")]
    NotPositive,
    #[error("the amount is too large")]
    TooLarge,
}

impl Currency {
    /// Parses a currency code, in any letter case.
    pub fn parse(code: &str) -> Result<Currency, MoneyError> {
        let upper = code.trim().to_ascii_uppercase();
        iso_currency::Currency::from_code(&upper).filter(|c| c.exponent().is_some()).map(Currency).ok_or_else(|| MoneyError::UnknownCurrency(code.to_owned()))
    }

    /// `USD`.
    pub fn code(self) -> &'static str {
        self.0.code()
    }

    /// Digits after the decimal point in minor units, as Stripe counts them.
    pub fn exponent(self) -> u32 {
        match self.code() {
            "ISK" => 2,
            _ => self.0.exponent().map_or(2, u32::from),
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An amount of money: `minor` units (cents, yen, fils…) of `currency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

impl Money {
    pub fn from_minor(minor: i64, currency: Currency) -> Money {
        Money { minor, currency }
    }

    /// Parses a decimal amount in major units (`"2000"`, `"2000.5"`, `"1999.99"`), as Kommo's
    /// price and numeric fields hold them.
    pub fn parse_major(amount: &str, currency: Currency) -> Result<Money, MoneyError> {
        let text = amount.trim();
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || !digits(fraction) || (text.contains('.') && fraction.is_empty()) {
            return Err(MoneyError::NotAnAmount(amount.to_owned()));
        }
        let exponent = currency.exponent();
        let significant = fraction.trim_end_matches('0');
        if significant.len() > exponent as usize {
            return Err(MoneyError::TooPrecise { amount: amount.to_owned(), currency, exponent });
        }
        let scale = 10i64.pow(exponent);
        let whole: i64 = whole.parse().map_err(|_| MoneyError::TooLarge)?;
        let fraction: i64 =
            if significant.is_empty() { 0 } else { format!("{significant:0<width$}", width = exponent as usize).parse().map_err(|_| MoneyError::TooLarge)? };
        let minor = whole.checked_mul(scale).and_then(|m| m.checked_add(fraction)).ok_or(MoneyError::TooLarge)?;
        Ok(Money { minor, currency })
    }

    pub fn minor(self) -> i64 {
        self.minor
    }

    pub fn currency(self) -> Currency {
        self.currency
    }

    /// The amount in major units with all its minor digits and no grouping (`2000.00`), as
    /// Kommo's numeric fields take it.
    pub fn major(self) -> String {
        let exponent = self.currency.exponent();
        let scale = 10u64.pow(exponent);
        let magnitude = self.minor.unsigned_abs();
        let sign = if self.minor < 0 { "-" } else { "" };
        match exponent {
            0 => format!("{sign}{magnitude}"),
            _ => format!("{sign}{}.{:0width$}", magnitude / scale, magnitude % scale, width = exponent as usize),
        }
    }

    /// Fails unless the amount is above zero.
    pub fn positive(self) -> Result<Money, MoneyError> {
        if self.minor > 0 { Ok(self) } else { Err(MoneyError::NotPositive) }
    }
}

/// `2,000.00 USD`, `1,500 JPY`.
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exponent = self.currency.exponent();
        let scale = 10u64.pow(exponent);
        let magnitude = self.minor.unsigned_abs();
        let whole = (magnitude / scale).to_string();
        let mut grouped = String::new();
        for (i, digit) in whole.chars().enumerate() {
            if i > 0 && (whole.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        let sign = if self.minor < 0 { "-" } else { "" };
        if exponent == 0 {
            write!(f, "{sign}{grouped} {}", self.currency)
        } else {
            write!(f, "{sign}{grouped}.{:0width$} {}", magnitude % scale, self.currency, width = exponent as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(amount: &str, code: &str) -> Result<Money, MoneyError> {
        Money::parse_major(amount, Currency::parse(code).unwrap())
    }

    #[test]
    fn currencies_parse_in_any_case_and_know_their_minor_units() {
        assert_eq!(Currency::parse("usd").unwrap().code(), "USD");
        let exponents: Vec<u32> = ["USD", "JPY", "KWD", "ISK", "EUR"].iter().map(|c| Currency::parse(c).unwrap().exponent()).collect();
        assert_eq!(exponents, vec![2, 0, 3, 2, 2]);
        for bad in ["", "US", "XYZ", "dollars", "XAU"] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn major_amounts_become_minor_units() {
        let cases = [
            ("2000", "USD", 200000),
            ("2000.5", "USD", 200050),
            ("19.99", "EUR", 1999),
            ("1500", "JPY", 1500),
            ("1.234", "KWD", 1234),
            ("10.10", "USD", 1010),
            ("3.00", "JPY", 3),
        ];
        for (amount, code, minor) in cases {
            assert_eq!(money(amount, code).unwrap().minor(), minor, "{amount} {code}");
        }
    }

    #[test]
    fn bad_amounts_are_refused_with_a_reason() {
        assert!(matches!(money("12.345", "USD"), Err(MoneyError::TooPrecise { .. })));
        assert!(matches!(money("1.5", "JPY"), Err(MoneyError::TooPrecise { .. })));
        for bad in ["", "abc", "-5", "1,000", "1.", ".5", "1e3", "1.2.3"] {
            assert!(matches!(money(bad, "USD"), Err(MoneyError::NotAnAmount(_))), "{bad}");
        }
        assert_eq!(money("99999999999999999999", "USD"), Err(MoneyError::TooLarge));
        assert_eq!(money("0", "USD").unwrap().positive(), Err(MoneyError::NotPositive));
    }

    #[test]
    fn display_groups_thousands_and_shows_the_minor_digits() {
        let usd = Currency::parse("USD").unwrap();
        assert_eq!(Money::from_minor(200000, usd).to_string(), "2,000.00 USD");
        assert_eq!(Money::from_minor(9900, usd).to_string(), "99.00 USD");
        assert_eq!(Money::from_minor(5, usd).to_string(), "0.05 USD");
        assert_eq!(Money::from_minor(-1234567, usd).to_string(), "-12,345.67 USD");
        assert_eq!(Money::from_minor(1500, Currency::parse("JPY").unwrap()).to_string(), "1,500 JPY");
        assert_eq!(Money::from_minor(1234, Currency::parse("KWD").unwrap()).to_string(), "1.234 KWD");
        assert_eq!(Money::from_minor(200000, usd).major(), "2000.00");
        assert_eq!(Money::from_minor(1500, Currency::parse("JPY").unwrap()).major(), "1500");
    }
}
