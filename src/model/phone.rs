//! Phone numbers: Alohub sends Vietnamese national numbers (`0389…`), sometimes `84…` or `+84…`,
//! sometimes masked (`03899xxx`), and agent extensions (`888`). A search must find a call whatever
//! form the caller typed, so every number is kept raw and also in a normalised form.

/// The normalised form of a phone number: E.164 (`+84…`) for a Vietnamese number in any of its
/// usual spellings, `+<digits>` for an international number, and otherwise the raw value trimmed
/// (masked numbers, extensions, anything that is not clearly a phone number).
pub fn normalize_phone(raw: &str) -> String {
    let trimmed = raw.trim();
    let compact: String = trimmed
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let (plus, digits) = match compact.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, compact.as_str()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return trimmed.to_string();
    }
    let national = if plus {
        if let Some(rest) = digits.strip_prefix("84") {
            rest
        } else {
            return format!("+{digits}");
        }
    } else if let Some(rest) = digits.strip_prefix("0084") {
        rest
    } else if digits.starts_with("84") && (11..=12).contains(&digits.len()) {
        &digits[2..]
    } else if digits.starts_with('0') && (10..=11).contains(&digits.len()) {
        &digits[1..]
    } else {
        return trimmed.to_string();
    };
    if (9..=10).contains(&national.len()) && !national.starts_with('0') {
        format!("+84{national}")
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_phone;

    #[test]
    fn vietnamese_forms_are_one_number() {
        for raw in [
            "0389123456",
            "+84389123456",
            "84389123456",
            "0084389123456",
            " 038 912-3456 ",
        ] {
            assert_eq!(normalize_phone(raw), "+84389123456", "{raw}");
        }
    }

    #[test]
    fn landline_with_eleven_digits() {
        assert_eq!(normalize_phone("02438123456"), "+842438123456");
        assert_eq!(normalize_phone("842438123456"), "+842438123456");
    }

    #[test]
    fn masked_numbers_and_extensions_stay_raw() {
        assert_eq!(normalize_phone("03899xxx"), "03899xxx");
        assert_eq!(normalize_phone("888"), "888");
        assert_eq!(normalize_phone("1900"), "1900");
        assert_eq!(normalize_phone(""), "");
    }

    #[test]
    fn international_numbers_keep_their_country() {
        assert_eq!(normalize_phone("+14155550100"), "+14155550100");
    }
}
