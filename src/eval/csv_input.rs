//! CSV input of `eval`, read with the `csv` crate through a header-name mapping.

use super::input::{CsvMapping, EvalEvent, InputError, Row, TsUnit};

/// Fields a mapping may name.
const FIELDS: [&str; 7] =
    ["user_id", "item_id", "ts", "event_type", "rating", "weight", "event_id"];

/// Parses `field=column,...` (header names) into a mapping with the other settings given.
///
/// # Errors
/// [`InputError::Mapping`] for an unknown field, a missing required field or a bad pair.
pub fn parse_csv_columns(
    spec: &str,
    ts_unit: TsUnit,
    event_type: &str,
    delimiter: u8,
) -> Result<CsvMapping, InputError> {
    let mut columns = std::collections::HashMap::new();
    for pair in spec.split(',').map(str::trim).filter(|pair| !pair.is_empty()) {
        let Some((field, column)) = pair.split_once('=') else {
            return Err(mapping(format!("{pair:?} is not field=column")));
        };
        if !FIELDS.contains(&field) {
            return Err(mapping(format!("unknown field {field:?}; fields are {FIELDS:?}")));
        }
        columns.insert(field.to_owned(), column.to_owned());
    }
    for required in ["user_id", "item_id", "ts"] {
        if !columns.contains_key(required) {
            return Err(mapping(format!("{required} must be mapped to a column")));
        }
    }
    Ok(CsvMapping { columns, ts_unit, event_type: event_type.to_owned(), delimiter })
}

fn mapping(message: String) -> InputError {
    InputError::Mapping { message }
}

pub(super) fn csv_rows(bytes: &[u8], mapping: Option<&CsvMapping>) -> Result<Vec<Row>, InputError> {
    let Some(mapping) = mapping else {
        return Err(InputError::Mapping { message: "csv input needs --csv-columns".to_owned() });
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(mapping.delimiter)
        .has_headers(true)
        .flexible(false)
        .from_reader(bytes);
    let headers = reader
        .headers()
        .map_err(|error| InputError::Csv { line: 1, message: error.to_string() })?
        .clone();
    let index_of = |field: &str| -> Result<Option<usize>, InputError> {
        let Some(column) = mapping.columns.get(field) else { return Ok(None) };
        headers.iter().position(|header| header.trim() == column).map(Some).ok_or_else(|| {
            InputError::Mapping {
                message: format!("column {column:?} (for {field}) not in the header"),
            }
        })
    };
    let [user, item, ts, event_type, rating, weight, event_id] = FIELDS.map(index_of);
    let (user, item, ts) = (user?.unwrap_or(0), item?.unwrap_or(0), ts?.unwrap_or(0));
    let (event_type, rating, weight, event_id) = (event_type?, rating?, weight?, event_id?);
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let line = index as u64 + 2;
        let record =
            record.map_err(|error| InputError::Csv { line, message: error.to_string() })?;
        let field = |column: usize, name: &str| -> Result<&str, InputError> {
            record
                .get(column)
                .map(str::trim)
                .filter(|value| !value.is_empty())
                .ok_or_else(|| InputError::Csv { line, message: format!("{name} is empty") })
        };
        let number = |column: usize, name: &str| -> Result<f64, InputError> {
            let text = field(column, name)?;
            text.parse::<f64>().ok().filter(|value| value.is_finite()).ok_or_else(|| {
                InputError::Csv { line, message: format!("{name} {text:?} is not a finite number") }
            })
        };
        let raw_ts = number(ts, "ts")?;
        let ts_ms = match mapping.ts_unit {
            TsUnit::Seconds => raw_ts * 1000.0,
            TsUnit::Millis => raw_ts,
        };
        if ts_ms.abs() > 1e17 {
            return Err(InputError::Csv { line, message: format!("ts {raw_ts} out of range") });
        }
        let user_id = field(user, "user_id")?.to_owned();
        let item_id = field(item, "item_id")?.to_owned();
        rows.push(Row {
            line,
            event_type: match event_type {
                Some(column) => field(column, "event_type")?.to_owned(),
                None => mapping.event_type.clone(),
            },
            rating: rating.map(|column| number(column, "rating")).transpose()?.map(|r| r as f32),
            event: EvalEvent {
                event_id: match event_id {
                    Some(column) => field(column, "event_id")?.to_owned(),
                    None => format!("csv-{line}-{user_id}-{item_id}"),
                },
                user: user_id,
                item: item_id,
                ts_ms: ts_ms as i64,
                weight: match weight {
                    Some(column) => number(column, "weight")? as f32,
                    None => 1.0,
                },
            },
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(spec: &str) -> CsvMapping {
        parse_csv_columns(spec, TsUnit::Seconds, "like", b',').unwrap()
    }

    #[test]
    fn rows_follow_the_mapping_and_units() {
        let text =
            b"ts,user,item,kind,w\n1700000000,alice,x,cart,2.5\n1700000001,bob,\"y,z\",buy,1\n";
        let rows = csv_rows(
            text,
            Some(&mapping("user_id=user,item_id=item,ts=ts,event_type=kind,weight=w")),
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].event.ts_ms, 1_700_000_000_000);
        assert_eq!(rows[0].event_type, "cart");
        assert_eq!(rows[0].event.weight, 2.5);
        assert_eq!(rows[1].event.item, "y,z", "quoted fields keep their delimiter");
        assert_eq!(rows[1].line, 3);
    }

    #[test]
    fn bad_mappings_and_rows_name_the_problem() {
        assert!(parse_csv_columns("user_id=u,item_id=i", TsUnit::Millis, "like", b',').is_err());
        assert!(parse_csv_columns(
            "user_id=u,item_id=i,ts=t,colour=c",
            TsUnit::Millis,
            "like",
            b','
        )
        .is_err());
        let missing = csv_rows(b"u,i,t\na,b,1\n", Some(&mapping("user_id=u,item_id=i,ts=time")));
        assert!(matches!(missing, Err(InputError::Mapping { .. })));
        for text in
            [&b"u,i,t\na,b,nan\n"[..], b"u,i,t\na,,1\n", b"u,i,t\na,b\n", b"u,i,t\na,b,1e30\n"]
        {
            let result = csv_rows(text, Some(&mapping("user_id=u,item_id=i,ts=t")));
            assert!(
                matches!(result, Err(InputError::Csv { line: 2, .. })),
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }
}
