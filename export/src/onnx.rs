//! The ONNX protobuf messages the exporter writes, declared with prost and the field
//! numbers of `onnx.proto` (ONNX IR 8). Only the fields mrank sets are declared; a reader
//! ignores nothing it needs, since absent proto2 fields take their defaults.

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(string, tag = "10")]
    pub doc_string: String,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, tag = "7")]
    pub domain: String,
}

/// `AttributeProto.AttributeType`.
pub mod attribute_type {
    pub const FLOAT: i32 = 1;
    pub const INT8: i32 = 3;
    pub const INT: i32 = 2;
    pub const TENSOR: i32 = 4;
    pub const INTS: i32 = 7;
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int32, tag = "20")]
    pub r#type: i32,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
}

impl AttributeProto {
    pub fn int(name: &str, value: i64) -> Self {
        AttributeProto {
            name: name.into(),
            r#type: attribute_type::INT,
            i: value,
            ..Default::default()
        }
    }
    pub fn float(name: &str, value: f32) -> Self {
        AttributeProto {
            name: name.into(),
            r#type: attribute_type::FLOAT,
            f: value,
            ..Default::default()
        }
    }
    pub fn ints(name: &str, values: &[i64]) -> Self {
        AttributeProto {
            name: name.into(),
            r#type: attribute_type::INTS,
            ints: values.to_vec(),
            ..Default::default()
        }
    }
    pub fn tensor(name: &str, value: TensorProto) -> Self {
        AttributeProto {
            name: name.into(),
            r#type: attribute_type::TENSOR,
            t: Some(value),
            ..Default::default()
        }
    }
}

/// `TensorProto.DataType`.
pub mod data_type {
    pub const FLOAT: i32 = 1;
    pub const INT8: i32 = 3;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const BOOL: i32 = 9;
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    /// 0 = in the file, 1 = external (`external_data` says where).
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

impl TensorProto {
    pub fn f32(name: &str, dims: &[usize], values: &[f32]) -> Self {
        TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type::FLOAT,
            name: name.into(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        }
    }
    pub fn i64(name: &str, dims: &[usize], values: &[i64]) -> Self {
        TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type::INT64,
            name: name.into(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        }
    }
    pub fn i8(name: &str, dims: &[usize], values: &[i8]) -> Self {
        TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type::INT8,
            name: name.into(),
            raw_data: values.iter().map(|&v| v as u8).collect(),
            ..Default::default()
        }
    }
    /// A float tensor whose bytes live at `offset..offset+length` of `location`.
    pub fn external_f32(
        name: &str,
        dims: &[usize],
        location: &str,
        offset: usize,
        length: usize,
    ) -> Self {
        Self::external(name, data_type::FLOAT, dims, location, offset, length)
    }
    /// A tensor of `data_type` whose bytes live at `offset..offset+length` of `location`.
    pub fn external(
        name: &str,
        data_type: i32,
        dims: &[usize],
        location: &str,
        offset: usize,
        length: usize,
    ) -> Self {
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: k.into(),
            value: v,
        };
        TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type,
            name: name.into(),
            external_data: vec![
                entry("location", location.into()),
                entry("offset", offset.to_string()),
                entry("length", length.to_string()),
            ],
            data_location: 1,
            ..Default::default()
        }
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TypeProtoTensor>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TypeProtoTensor {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    #[prost(oneof = "DimensionValue", tags = "1, 2")]
    pub value: Option<DimensionValue>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum DimensionValue {
    #[prost(int64, tag = "1")]
    DimValue(i64),
    #[prost(string, tag = "2")]
    DimParam(String),
}

impl ValueInfoProto {
    /// A tensor value whose dims are symbolic names (`"batch"`) or fixed sizes.
    pub fn tensor(name: &str, elem_type: i32, dims: &[DimSpec]) -> Self {
        let dim = dims
            .iter()
            .map(|d| Dimension {
                value: Some(match d {
                    DimSpec::Named(n) => DimensionValue::DimParam((*n).into()),
                    DimSpec::Fixed(v) => DimensionValue::DimValue(*v as i64),
                }),
            })
            .collect();
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(TypeProtoTensor {
                    elem_type,
                    shape: Some(TensorShapeProto { dim }),
                }),
            }),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum DimSpec {
    Named(&'static str),
    Fixed(usize),
}

pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}
