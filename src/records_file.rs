//! Plan record files as local authorities exchange them: CSV with a header
//! row, or JSON Lines, with the same field names. Reading gives one result
//! per row so that a bad row is reported by its line and the good rows still
//! load; writing produces files that read back unchanged (export, synth).

use std::{
    fs::File,
    io::{BufRead, BufReader, BufWriter, Read, Write},
    path::Path,
};

use serde::{Deserialize, Serialize};

use crate::{model::PlanType, proto, wire};

/// The columns, in file order. `la_ods_code` is optional on upload: rows of
/// other authorities are skipped.
pub(crate) const COLUMNS: [&str; 16] = [
    "nhs_number",
    "local_id",
    "given_name",
    "family_name",
    "date_of_birth",
    "address_line_1",
    "address_line_2",
    "address_line_3",
    "address_line_4",
    "postcode",
    "plan_type",
    "start_date",
    "end_date",
    "expected_delivery_date",
    "team_code",
    "la_ods_code",
];
const REQUIRED_COLUMNS: [&str; 6] =
    ["nhs_number", "local_id", "given_name", "family_name", "date_of_birth", "plan_type"];

/// One row as the file has it. `Debug` shows the plan type and authority
/// only: every other field is personal data.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileRecord {
    pub nhs_number: String,
    pub local_id: String,
    pub given_name: String,
    pub family_name: String,
    pub date_of_birth: String,
    pub address_line_1: String,
    pub address_line_2: String,
    pub address_line_3: String,
    pub address_line_4: String,
    pub postcode: String,
    #[serde(alias = "type")]
    pub plan_type: String,
    pub start_date: String,
    pub end_date: String,
    pub expected_delivery_date: String,
    pub team_code: String,
    pub la_ods_code: String,
}

/// One row of a file. `Debug` shows the line, the authority and whether the
/// record was read, never the record (prost's `Debug` of it shows names).
#[derive(Clone, PartialEq)]
pub struct Row {
    /// One-based line number in the file (the header is line 1 of a CSV).
    pub line: u64,
    /// The authority named by the row, if the file has that column.
    pub la_ods_code: Option<String>,
    /// The record, or why the row cannot be read.
    pub record: Result<proto::PlanRecord, String>,
}

impl FileRecord {
    /// The record with every control character of every field escaped (see
    /// [`crate::text::escape_control`]): for a terminal, never for a file,
    /// whose values must read back unchanged.
    pub fn escaped(&self) -> Self {
        let e = |text: &String| crate::text::escape_control(text).into_owned();
        Self {
            nhs_number: e(&self.nhs_number),
            local_id: e(&self.local_id),
            given_name: e(&self.given_name),
            family_name: e(&self.family_name),
            date_of_birth: e(&self.date_of_birth),
            address_line_1: e(&self.address_line_1),
            address_line_2: e(&self.address_line_2),
            address_line_3: e(&self.address_line_3),
            address_line_4: e(&self.address_line_4),
            postcode: e(&self.postcode),
            plan_type: e(&self.plan_type),
            start_date: e(&self.start_date),
            end_date: e(&self.end_date),
            expected_delivery_date: e(&self.expected_delivery_date),
            team_code: e(&self.team_code),
            la_ods_code: e(&self.la_ods_code),
        }
    }
}

impl std::fmt::Debug for FileRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRecord")
            .field("plan_type", &self.plan_type)
            .field("la_ods_code", &self.la_ods_code)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Row")
            .field("line", &self.line)
            .field("la_ods_code", &self.la_ods_code)
            .field("read", &self.record.is_ok())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {message}")]
    Unreadable { path: String, message: String },
    #[error("{path}: the header has no {column:?} column (columns: {columns})")]
    MissingColumn { path: String, column: &'static str, columns: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    JsonLines,
}

impl Format {
    /// `.jsonl`, `.ndjson` and `.json` are JSON Lines; anything else is CSV.
    pub fn of(path: &Path) -> Self {
        match path.extension().and_then(|extension| extension.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("jsonl" | "ndjson" | "json") => Self::JsonLines,
            _ => Self::Csv,
        }
    }
}

/// Reads every row of a CSV or JSON Lines file.
pub fn read(path: &Path) -> Result<Vec<Row>, FileError> {
    let file = File::open(path)
        .map_err(|error| FileError::Unreadable { path: path.display().to_string(), message: error.to_string() })?;
    read_from(file, Format::of(path), &path.display().to_string())
}

/// Reads every row of CSV or JSON Lines text from `reader`; `name` (a path)
/// names it in errors. Whatever the bytes, it returns rows or an error and
/// never panics (fuzzed: `fuzz/fuzz_targets/records_csv.rs` and `records_jsonl.rs`).
pub fn read_from(reader: impl Read, format: Format, name: &str) -> Result<Vec<Row>, FileError> {
    let unreadable = |message: String| FileError::Unreadable { path: name.to_owned(), message };
    match format {
        Format::JsonLines => {
            let mut rows = Vec::new();
            for (number, line) in BufReader::new(reader).lines().enumerate() {
                let line = line.map_err(|error| unreadable(error.to_string()))?;
                if line.trim().is_empty() {
                    continue;
                }
                let record =
                    serde_json::from_str::<FileRecord>(&line).map_err(|error| format!("not a JSON record: {error}"));
                rows.push(row(number as u64 + 1, record));
            }
            Ok(rows)
        }
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).flexible(false).from_reader(reader);
            let headers = reader.headers().map_err(|error| unreadable(error.to_string()))?.clone();
            for column in REQUIRED_COLUMNS {
                if !headers.iter().any(|header| header == column || (column == "plan_type" && header == "type")) {
                    return Err(FileError::MissingColumn {
                        path: name.to_owned(),
                        column,
                        columns: headers.iter().collect::<Vec<_>>().join(","),
                    });
                }
            }
            let mut rows = Vec::new();
            for (number, result) in reader.deserialize::<FileRecord>().enumerate() {
                let record = result.map_err(|error| format!("unreadable CSV row: {error}"));
                rows.push(row(number as u64 + 2, record));
            }
            Ok(rows)
        }
    }
}

fn row(line: u64, record: Result<FileRecord, String>) -> Row {
    match record {
        Ok(record) => {
            let la_ods_code = (!record.la_ods_code.trim().is_empty()).then(|| record.la_ods_code.trim().to_owned());
            Row { line, la_ods_code, record: to_wire(record) }
        }
        Err(message) => Row { line, la_ods_code: None, record: Err(message) },
    }
}

/// A file record as the wire record; only the plan type is checked here.
pub(crate) fn to_wire(record: FileRecord) -> Result<proto::PlanRecord, String> {
    let plan_type = match record.plan_type.trim() {
        "" => proto::PlanType::Unspecified,
        text => wire::plan_type(
            PlanType::parse(text).ok_or_else(|| format!("plan_type: {text:?} is not CPPI, LACI or UCPI"))?,
        ),
    };
    let lines = [record.address_line_1, record.address_line_2, record.address_line_3, record.address_line_4]
        .into_iter()
        .filter(|line| !line.trim().is_empty())
        .collect();
    Ok(proto::PlanRecord {
        nhs_number: record.nhs_number,
        local_id: record.local_id,
        given_name: record.given_name,
        family_name: record.family_name,
        date_of_birth: record.date_of_birth,
        address: Some(proto::Address { lines, postcode: record.postcode }),
        r#type: plan_type as i32,
        start_date: record.start_date,
        end_date: record.end_date,
        expected_delivery_date: record.expected_delivery_date,
        team_code: record.team_code,
    })
}

/// The file form of a wire record.
pub(crate) fn from_wire(record: &proto::PlanRecord, la_ods_code: &str) -> FileRecord {
    let address = record.address.clone().unwrap_or_default();
    let line = |index: usize| address.lines.get(index).cloned().unwrap_or_default();
    let plan_type = match proto::PlanType::try_from(record.r#type) {
        Ok(proto::PlanType::ChildProtection) => "CPPI",
        Ok(proto::PlanType::LookedAfter) => "LACI",
        Ok(proto::PlanType::UnbornChildProtection) => "UCPI",
        _ => "",
    };
    FileRecord {
        nhs_number: record.nhs_number.clone(),
        local_id: record.local_id.clone(),
        given_name: record.given_name.clone(),
        family_name: record.family_name.clone(),
        date_of_birth: record.date_of_birth.clone(),
        address_line_1: line(0),
        address_line_2: line(1),
        address_line_3: line(2),
        address_line_4: line(3),
        postcode: address.postcode.clone(),
        plan_type: plan_type.to_owned(),
        start_date: record.start_date.clone(),
        end_date: record.end_date.clone(),
        expected_delivery_date: record.expected_delivery_date.clone(),
        team_code: record.team_code.clone(),
        la_ods_code: la_ods_code.to_owned(),
    }
}

/// Writes records as CSV with a header row, or as JSON Lines.
pub fn write<'a>(
    writer: impl Write,
    format: Format,
    records: impl IntoIterator<Item = &'a FileRecord>,
) -> std::io::Result<()> {
    let mut writer = BufWriter::new(writer);
    match format {
        Format::Csv => {
            let mut csv = csv::Writer::from_writer(&mut writer);
            let mut wrote_any = false;
            for record in records {
                csv.serialize(record).map_err(std::io::Error::other)?;
                wrote_any = true;
            }
            if !wrote_any {
                csv.write_record(COLUMNS).map_err(std::io::Error::other)?;
            }
            csv.flush()?;
        }
        Format::JsonLines => {
            for record in records {
                serde_json::to_writer(&mut writer, record).map_err(std::io::Error::other)?;
                writer.write_all(b"\n")?;
            }
        }
    }
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_file_records_and_rows_carries_no_personal_data() {
        let text = "nhs_number,local_id,given_name,family_name,date_of_birth,address_line_1,postcode,plan_type,la_ods_code\n\
                    9990000018,CASE-31337,Zebedee,Quixotic,2013-07-19,7 Xylophone Mews,QQ9 9QQ,CPPI,706\n";
        let rows = read_from(text.as_bytes(), Format::Csv, "memory.csv").unwrap();
        assert_eq!(rows.len(), 1);
        assert!(rows[0].record.is_ok(), "{:?}", rows[0]);
        let record = from_wire(rows[0].record.as_ref().unwrap(), "706");
        let shown = format!("{rows:?} {rows:#?} {record:?}");
        for personal in ["9990000018", "CASE-31337", "Zebedee", "Quixotic", "2013-07-19", "Xylophone", "QQ9 9QQ"] {
            assert!(!shown.contains(personal), "{personal} in {shown}");
        }
        assert!(shown.contains("706") && shown.contains("CPPI"), "{shown}");
    }
}
