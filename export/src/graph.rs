//! A small builder for ONNX graphs: named values, one method per operator mrank uses,
//! constants inline, large weights in a shared external-data file.

use std::collections::BTreeMap;

use models::manifest::ElementType;

use crate::onnx::{
    data_type, AttributeProto, DimSpec, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, ValueInfoProto,
};

/// ONNX opset the graphs target (LayerNormalization is in 17).
pub const OPSET: i64 = 17;
/// Additive mask for hidden keys. Finite, so a fully masked row (a padding query under
/// a sliding window) gives a uniform softmax rather than NaN.
pub const MASKED: f32 = -1e9;

/// Where one shared weight sits in the external-data file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct StoredWeight {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub length: usize,
    pub dtype: ElementType,
}

/// The external-data file shared by every graph of an export: each weight is written
/// once, whichever graphs use it.
#[derive(Debug, Default)]
pub struct WeightStore {
    pub file_name: String,
    pub bytes: Vec<u8>,
    pub index: BTreeMap<String, StoredWeight>,
}

impl WeightStore {
    pub fn new(file_name: &str) -> Self {
        WeightStore {
            file_name: file_name.into(),
            ..Default::default()
        }
    }

    /// Adds `values` under `name` unless already stored; returns its location.
    pub fn add(&mut self, name: &str, shape: &[usize], values: &[f32]) -> StoredWeight {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_bytes(name, shape, &bytes, ElementType::F32)
    }

    /// Adds the raw little-endian `bytes` of a `dtype` tensor under `name` unless
    /// already stored.
    pub fn add_bytes(
        &mut self,
        name: &str,
        shape: &[usize],
        bytes: &[u8],
        dtype: ElementType,
    ) -> StoredWeight {
        if let Some(w) = self.index.get(name) {
            return w.clone();
        }
        // 64-byte alignment lets readers map tensors without copying.
        while !self.bytes.len().is_multiple_of(64) {
            self.bytes.push(0);
        }
        let offset = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        let stored = StoredWeight {
            name: name.into(),
            shape: shape.to_vec(),
            offset,
            length: bytes.len(),
            dtype,
        };
        self.index.insert(name.into(), stored.clone());
        stored
    }
}

pub struct GraphBuilder<'s> {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    counter: usize,
    store: Option<&'s mut WeightStore>,
    /// Shared weights this graph references (the runtime hands them to ONNX Runtime once).
    pub shared: Vec<String>,
    cache: BTreeMap<String, String>,
    uses_contrib: bool,
}

/// The domain of ONNX Runtime's contrib operators.
pub const CONTRIB_DOMAIN: &str = "com.microsoft";

impl<'s> GraphBuilder<'s> {
    pub fn new(store: Option<&'s mut WeightStore>) -> Self {
        GraphBuilder {
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            counter: 0,
            store,
            shared: Vec::new(),
            cache: BTreeMap::new(),
            uses_contrib: false,
        }
    }

    pub fn input(&mut self, name: &str, elem_type: i32, dims: &[DimSpec]) -> String {
        self.inputs
            .push(ValueInfoProto::tensor(name, elem_type, dims));
        name.into()
    }

    pub fn output(&mut self, value: &str, name: &str, elem_type: i32, dims: &[DimSpec]) {
        self.op_named("Identity", &[value], vec![], name);
        self.outputs
            .push(ValueInfoProto::tensor(name, elem_type, dims));
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// A weight: in the shared external file when the builder has a store (base
    /// weights), else inline (adapters, heads, small tables).
    pub fn weight(&mut self, name: &str, shape: &[usize], values: &[f32]) -> String {
        if let Some(v) = self.cache.get(name) {
            return v.clone();
        }
        let tensor = match self.store.as_deref_mut() {
            Some(store) => {
                let w = store.add(name, shape, values);
                self.shared.push(name.into());
                TensorProto::external_f32(name, shape, &store.file_name, w.offset, w.length)
            }
            None => TensorProto::f32(name, shape, values),
        };
        self.initializers.push(tensor);
        self.cache.insert(name.into(), name.into());
        name.into()
    }

    /// An int8 weight (quantized projections), shared like `weight`.
    pub fn weight_i8(&mut self, name: &str, shape: &[usize], values: &[i8]) -> String {
        if let Some(v) = self.cache.get(name) {
            return v.clone();
        }
        let tensor = match self.store.as_deref_mut() {
            Some(store) => {
                let bytes: Vec<u8> = values.iter().map(|&v| v as u8).collect();
                let w = store.add_bytes(name, shape, &bytes, ElementType::I8);
                self.shared.push(name.into());
                TensorProto::external(
                    name,
                    data_type::INT8,
                    shape,
                    &store.file_name,
                    w.offset,
                    w.length,
                )
            }
            None => TensorProto::i8(name, shape, values),
        };
        self.initializers.push(tensor);
        self.cache.insert(name.into(), name.into());
        name.into()
    }

    /// A weight kept in this graph's own file, whatever the store (names are unique: a
    /// second request for a name returns the first initializer).
    pub fn inline_weight(&mut self, name: &str, shape: &[usize], values: &[f32]) -> String {
        if let Some(v) = self.cache.get(name) {
            return v.clone();
        }
        self.initializers
            .push(TensorProto::f32(name, shape, values));
        self.cache.insert(name.into(), name.into());
        name.into()
    }

    /// An int8 weight kept in this graph's own file (`inline_weight`'s int8 twin).
    pub fn inline_weight_i8(&mut self, name: &str, shape: &[usize], values: &[i8]) -> String {
        if let Some(v) = self.cache.get(name) {
            return v.clone();
        }
        self.initializers.push(TensorProto::i8(name, shape, values));
        self.cache.insert(name.into(), name.into());
        name.into()
    }

    pub fn const_i64(&mut self, values: &[i64]) -> String {
        let key = format!("i64:{values:?}");
        if let Some(v) = self.cache.get(&key) {
            return v.clone();
        }
        let name = self.fresh("const");
        self.initializers
            .push(TensorProto::i64(&name, &[values.len()], values));
        self.cache.insert(key, name.clone());
        name
    }

    pub fn scalar_i64(&mut self, value: i64) -> String {
        let key = format!("si64:{value}");
        if let Some(v) = self.cache.get(&key) {
            return v.clone();
        }
        let name = self.fresh("const");
        self.initializers
            .push(TensorProto::i64(&name, &[], &[value]));
        self.cache.insert(key, name.clone());
        name
    }

    pub fn scalar_f32(&mut self, value: f32) -> String {
        let key = format!("sf32:{}", value.to_bits());
        if let Some(v) = self.cache.get(&key) {
            return v.clone();
        }
        let name = self.fresh("const");
        self.initializers
            .push(TensorProto::f32(&name, &[], &[value]));
        self.cache.insert(key, name.clone());
        name
    }

    pub fn op(&mut self, op_type: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op_type.to_lowercase());
        self.op_named(op_type, inputs, attrs, &out);
        out
    }

    fn op_named(&mut self, op_type: &str, inputs: &[&str], attrs: Vec<AttributeProto>, out: &str) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.into()],
            name: format!("{op_type}_{}", self.nodes.len()),
            op_type: op_type.into(),
            attribute: attrs,
            domain: String::new(),
        });
    }

    /// A standard operator with `n` outputs (e.g. DynamicQuantizeLinear's value, scale
    /// and zero point).
    pub fn op_outputs(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        n: usize,
    ) -> Vec<String> {
        let first = self.op(op_type, inputs, attrs);
        self.extra_outputs(first, n)
    }

    /// Names `n - 1` more outputs of the node just added.
    fn extra_outputs(&mut self, first: String, n: usize) -> Vec<String> {
        let mut outs = vec![first];
        for k in 1..n {
            let extra = format!("{}_out{k}", outs[0]);
            self.nodes
                .last_mut()
                .expect("just pushed")
                .output
                .push(extra.clone());
            outs.push(extra);
        }
        outs
    }

    /// A contrib operator with `n` outputs (operators whose schema requires outputs
    /// the graph does not use).
    pub fn contrib_op_outputs(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        n: usize,
    ) -> Vec<String> {
        let first = self.contrib_op(op_type, inputs, attrs);
        self.extra_outputs(first, n)
    }

    /// An ONNX Runtime contrib operator (`com.microsoft` domain); an empty input name
    /// skips an optional input.
    pub fn contrib_op(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> String {
        let out = self.fresh(&op_type.to_lowercase());
        self.op_named(op_type, inputs, attrs, &out);
        self.nodes.last_mut().expect("just pushed").domain = CONTRIB_DOMAIN.into();
        self.uses_contrib = true;
        out
    }

    // One method per operator, so family code reads like the math.
    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.op("Add", &[a, b], vec![])
    }
    pub fn sub(&mut self, a: &str, b: &str) -> String {
        self.op("Sub", &[a, b], vec![])
    }
    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.op("Mul", &[a, b], vec![])
    }
    pub fn div(&mut self, a: &str, b: &str) -> String {
        self.op("Div", &[a, b], vec![])
    }
    pub fn matmul(&mut self, a: &str, b: &str) -> String {
        self.op("MatMul", &[a, b], vec![])
    }
    pub fn gather(&mut self, data: &str, indices: &str, axis: i64) -> String {
        self.op(
            "Gather",
            &[data, indices],
            vec![AttributeProto::int("axis", axis)],
        )
    }
    pub fn cast(&mut self, x: &str, to: i32) -> String {
        self.op("Cast", &[x], vec![AttributeProto::int("to", to as i64)])
    }
    pub fn to_f32(&mut self, x: &str) -> String {
        self.cast(x, data_type::FLOAT)
    }
    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.op("Transpose", &[x], vec![AttributeProto::ints("perm", perm)])
    }
    pub fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.const_i64(shape);
        self.op("Reshape", &[x, &s], vec![])
    }
    pub fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> String {
        let a = self.const_i64(axes);
        self.op("Unsqueeze", &[x, &a], vec![])
    }
    pub fn squeeze(&mut self, x: &str, axes: &[i64]) -> String {
        let a = self.const_i64(axes);
        self.op("Squeeze", &[x, &a], vec![])
    }
    pub fn reduce_sum(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        let a = self.const_i64(axes);
        self.op(
            "ReduceSum",
            &[x, &a],
            vec![AttributeProto::int("keepdims", keepdims as i64)],
        )
    }
    pub fn reduce_max(&mut self, x: &str, keepdims: bool) -> String {
        self.op(
            "ReduceMax",
            &[x],
            vec![AttributeProto::int("keepdims", keepdims as i64)],
        )
    }
    pub fn reduce_mean(&mut self, x: &str, axes: &[i64]) -> String {
        self.op(
            "ReduceMean",
            &[x],
            vec![
                AttributeProto::ints("axes", axes),
                AttributeProto::int("keepdims", 1),
            ],
        )
    }
    pub fn softmax(&mut self, x: &str) -> String {
        self.op("Softmax", &[x], vec![AttributeProto::int("axis", -1)])
    }
    pub fn where_(&mut self, cond: &str, a: &str, b: &str) -> String {
        self.op("Where", &[cond, a, b], vec![])
    }
    pub fn less(&mut self, a: &str, b: &str) -> String {
        self.op("Less", &[a, b], vec![])
    }
    pub fn equal(&mut self, a: &str, b: &str) -> String {
        self.op("Equal", &[a, b], vec![])
    }
    pub fn and(&mut self, a: &str, b: &str) -> String {
        self.op("And", &[a, b], vec![])
    }
    pub fn not(&mut self, a: &str) -> String {
        self.op("Not", &[a], vec![])
    }
    pub fn unary(&mut self, op: &str, x: &str) -> String {
        self.op(op, &[x], vec![])
    }
    pub fn max(&mut self, a: &str, b: &str) -> String {
        self.op("Max", &[a, b], vec![])
    }
    /// `0..n` (int64), `n` a scalar value.
    pub fn range(&mut self, n: &str) -> String {
        let zero = self.scalar_i64(0);
        let one = self.scalar_i64(1);
        self.op("Range", &[&zero, n, &one], vec![])
    }
    /// Size of axis `axis` of `x`, as an int64 scalar.
    pub fn dim(&mut self, x: &str, axis: i64) -> String {
        let shape = self.op("Shape", &[x], vec![]);
        let i = self.scalar_i64(axis);
        self.gather(&shape, &i, 0)
    }
    pub fn layer_norm(&mut self, x: &str, weight: &str, bias: &str, eps: f64) -> String {
        self.op(
            "LayerNormalization",
            &[x, weight, bias],
            vec![
                AttributeProto::int("axis", -1),
                AttributeProto::float("epsilon", eps as f32),
            ],
        )
    }

    pub fn finish(self, name: &str, doc: &str, metadata: &[(&str, String)]) -> ModelProto {
        let mut opset_import = vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }];
        if self.uses_contrib {
            opset_import.push(OperatorSetIdProto {
                domain: CONTRIB_DOMAIN.into(),
                version: 1,
            });
        }
        ModelProto {
            ir_version: 8,
            opset_import,
            producer_name: "mrank".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc.into(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: name.into(),
                initializer: self.initializers,
                doc_string: String::new(),
                input: self.inputs,
                output: self.outputs,
            }),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: (*k).into(),
                    value: v.clone(),
                })
                .collect(),
        }
    }
}
