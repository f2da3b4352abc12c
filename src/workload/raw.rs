//! The raw shape of a workload file: serde types that carry a source span on every
//! value and key, deserialized by serde-saphyr.
//!
//! These types accept anything that is valid YAML. A value of the wrong shape (a list
//! where a mapping belongs, an unknown key, a string where a number belongs) is kept,
//! with its line, for `validate.rs` to report together with every other problem,
//! instead of failing the whole file at the first one as `deny_unknown_fields` or
//! typed fields would. Spans come from the parser, so flow style (`{a: 1, b: 2}`,
//! `[1, 2]`) gets the right lines as well as block style. Nothing here interprets a
//! value: that is the validation pass's job.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
pub use serde_saphyr::Spanned;

/// Any YAML value, its children spanned. Used for values whose meaning depends on
/// their shape (`command: "a b"` or `command: [a, b]`) and for data maps
/// (`environment`, `labels`) whose keys are not schema.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Node>, Spanned<Node>)>),
}

impl Node {
    /// How a person would call this value in a message.
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Null => "nothing",
            Node::Bool(_) => "a boolean",
            Node::Int(_) | Node::Float(_) => "a number",
            Node::Str(_) => "a string",
            Node::Seq(_) => "a list",
            Node::Map(_) => "a mapping",
        }
    }
}

/// 1-based line of a span; serde-saphyr reports 0 when it has none (never for the
/// values read here, but 1 is the honest fallback for a one-line answer).
pub fn line_of<T>(spanned: &Spanned<T>) -> usize {
    usize::try_from(spanned.referenced.line()).map_or(1, |l| l.max(1))
}

/// Builds a [`Node`] from whatever the deserializer holds; shared by [`Node`],
/// [`Section`] and [`List`] so that a wrong shape is kept rather than refused.
struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        i128::try_from(v)
            .map(Node::Int)
            .map_err(|_| E::custom("integer too large"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<Spanned<Node>, Spanned<Node>>()? {
            entries.push(entry);
        }
        Ok(Node::Map(entries))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

/// Forwards every non-map (or non-seq) visit of a shape-tolerant visitor to
/// [`NodeVisitor`], wrapping the result with `$other`.
macro_rules! forward_to_node {
    ($other:path) => {
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            NodeVisitor.visit_bool(v).map($other)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            NodeVisitor.visit_i64(v).map($other)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            NodeVisitor.visit_u64(v).map($other)
        }
        fn visit_i128<E: de::Error>(self, v: i128) -> Result<Self::Value, E> {
            NodeVisitor.visit_i128(v).map($other)
        }
        fn visit_u128<E: de::Error>(self, v: u128) -> Result<Self::Value, E> {
            NodeVisitor.visit_u128(v).map($other)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            NodeVisitor.visit_f64(v).map($other)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            NodeVisitor.visit_str(v).map($other)
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            NodeVisitor.visit_string(v).map($other)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($other(Node::Null))
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($other(Node::Null))
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    };
}

/// A schema mapping (`pool:`, `healthcheck:`, ...) or, when the file has something
/// else there, that value to report as "expected a mapping".
#[derive(Debug)]
pub enum Section<T> {
    Map(T),
    Other(Node),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Section<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Section<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            forward_to_node!(Section::Other);
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Section::Map)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                NodeVisitor.visit_seq(seq).map(Section::Other)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A list of `T` or, when the file has something else there, that value.
#[derive(Debug)]
pub enum List<T> {
    Seq(Vec<Spanned<T>>),
    Other(Node),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = List<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list")
            }
            forward_to_node!(List::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::deserialize(SeqAccessDeserializer::new(seq)).map(List::Seq)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                NodeVisitor.visit_map(map).map(List::Other)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// Whether a value counts as left out: a key with no value (`image:`) is absent.
pub trait Absent {
    fn is_absent(&self) -> bool;
}

impl Absent for Node {
    fn is_absent(&self) -> bool {
        *self == Node::Null
    }
}

impl<T> Absent for Section<T> {
    fn is_absent(&self) -> bool {
        matches!(self, Section::Other(Node::Null))
    }
}

impl<T> Absent for List<T> {
    fn is_absent(&self) -> bool {
        matches!(self, List::Other(Node::Null))
    }
}

/// One key of a schema mapping with its value; `line` is the key's line, which is
/// where a problem with the value is reported (as the old line scanner did).
#[derive(Debug)]
pub struct Field<T> {
    pub line: usize,
    pub name: String,
    pub value: Spanned<T>,
}

/// Declares a schema mapping: its known keys (each `Option<Field<T>>`), plus the keys
/// it does not know and the keys that are not strings, both kept with their lines.
/// Keys starting with `x-` are extension fields (as in compose) and skipped.
macro_rules! raw_section {
    ($(#[$meta:meta])* $name:ident { $($field:ident: $ty:ty = $key:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $(pub $field: Option<Field<$ty>>,)*
            pub unknown: Vec<Field<Node>>,
            pub bad_keys: Vec<Spanned<Node>>,
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str(concat!("the `", stringify!($name), "` mapping"))
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<$name, A::Error> {
                        let mut out = $name::default();
                        while let Some(key) = map.next_key::<Spanned<Node>>()? {
                            let line = line_of(&key);
                            let Node::Str(name) = key.value.clone() else {
                                map.next_value::<IgnoredAny>()?;
                                out.bad_keys.push(key);
                                continue;
                            };
                            match name.as_str() {
                                n if n.starts_with("x-") => {
                                    map.next_value::<IgnoredAny>()?;
                                }
                                $($key => {
                                    let value: Spanned<$ty> = map.next_value()?;
                                    if !value.value.is_absent() {
                                        out.$field = Some(Field { line, name, value });
                                    }
                                })*
                                _ => {
                                    let value: Spanned<Node> = map.next_value()?;
                                    if !value.value.is_absent() {
                                        out.unknown.push(Field { line, name, value });
                                    }
                                }
                            }
                        }
                        Ok(out)
                    }
                }
                d.deserialize_map(V)
            }
        }
    };
}

raw_section!(
    /// The top level of a workload file.
    RawWorkload {
        id: Node = "id",
        name: Node = "name",
        image: Node = "image",
        command: Node = "command",
        entrypoint: Node = "entrypoint",
        environment: Node = "environment",
        volumes: Section<RawVolumes> = "volumes",
        healthcheck: Section<RawHealthcheck> = "healthcheck",
        ports: List<Section<RawPort>> = "ports",
        deploy: Section<RawDeploy> = "deploy",
        read_only: Node = "read_only",
        user: Node = "user",
        network_mode: Node = "network_mode",
        labels: Node = "labels",
        cap_add: Node = "cap_add",
        pool: Section<RawPool> = "pool",
        sync: Section<RawSync> = "sync",
        privileged: Node = "privileged",
        pid: Node = "pid",
        ipc: Node = "ipc",
        userns_mode: Node = "userns_mode",
    }
);

raw_section!(RawVolumes {
    state: Section<RawMount> = "state",
    secrets: Section<RawMount> = "secrets",
    comm: Section<RawMount> = "comm",
});

raw_section!(RawMount {
    target: Node = "target",
    read_only: Node = "read_only",
    source: Node = "source",
    kind: Node = "type",
});

raw_section!(RawHealthcheck {
    test: Node = "test",
    interval: Node = "interval",
    timeout: Node = "timeout",
    retries: Node = "retries",
    start_period: Node = "start_period",
    start_interval: Node = "start_interval",
    disable: Node = "disable",
});

raw_section!(RawPort {
    container: Node = "container",
    host: Node = "host",
    protocol: Node = "protocol",
});

raw_section!(
    /// `deploy.resources.limits`: the only part of compose's `deploy` that applies.
    RawDeploy { resources: Section<RawResources> = "resources" }
);

raw_section!(RawResources {
    limits: Section<RawLimits> = "limits"
});

raw_section!(RawLimits {
    cpus: Node = "cpus",
    memory: Node = "memory",
    pids: Node = "pids",
});

raw_section!(RawPool {
    min_size: Node = "min_size",
    max_size: Node = "max_size",
    idle_timeout: Node = "idle_timeout",
    recycle: Node = "recycle",
    ready_timeout: Node = "ready_timeout",
    autoscale: Section<RawAutoscale> = "autoscale",
});

raw_section!(RawAutoscale {
    buffer: Node = "buffer",
    window: Node = "window",
    scale_down_delay: Node = "scale_down_delay",
});

raw_section!(RawSync {
    sink: Section<RawSink> = "sink",
    mappings: List<Section<RawMapping>> = "mappings",
    policy: Section<RawPolicy> = "policy",
});

raw_section!(RawSink {
    kind: Node = "type",
    bucket: Node = "bucket",
    region: Node = "region",
    endpoint: Node = "endpoint",
    access_key_id: Node = "access_key_id",
    secret_access_key: Node = "secret_access_key",
    prefix: Node = "prefix",
    rclone_flags: List<Node> = "rclone_flags",
});

raw_section!(RawMapping {
    path: Node = "path",
    direction: Node = "direction",
    mode: Node = "mode",
    pattern: Node = "pattern",
});

raw_section!(RawPolicy {
    on_claim: Node = "on_claim",
    on_release: Node = "on_release",
    manual: Node = "manual",
    periodic: Node = "periodic",
    interval: Node = "interval",
});

/// A whole file: the top-level mapping, or what stands there instead.
pub type RawFile = Spanned<Section<RawWorkload>>;

/// Parses `text`; the error is the parser's (invalid YAML, a duplicate key, ...).
///
/// Scalars are read as YAML 1.2 and as serde_yaml (the previous parser) read them, so
/// files keep their meaning: `N`, `yes` or `off` stay strings (an environment value
/// `DEBUG: off` is the text "off"), `0755` and `1_000` stay text rather than numbers.
pub fn parse(text: &str) -> Result<RawFile, serde_saphyr::Error> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        // The error goes on one `file:line: message` line; no source snippet.
        with_snippet: false,
    };
    serde_saphyr::from_str_with_options(text, options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> RawWorkload {
        match parse(text).expect("valid YAML").value {
            Section::Map(w) => w,
            Section::Other(node) => panic!("not a mapping: {node:?}"),
        }
    }

    #[test]
    fn keys_and_values_carry_their_lines_in_block_and_flow_style() {
        let w = parsed(
            "# c\nid: a\npool: {\n  min_size: 2, max_size: x\n}\nports: [\n  8080,\n  \"9\"]\n",
        );
        assert_eq!(w.id.as_ref().map(|f| f.line), Some(2));
        let Some(Section::Map(pool)) = w.pool.as_ref().map(|f| &f.value.value) else {
            panic!("pool")
        };
        let max = pool.max_size.as_ref().expect("max_size");
        assert_eq!((max.line, &max.value.value), (4, &Node::Str("x".into())));
        let Some(List::Seq(ports)) = w.ports.as_ref().map(|f| &f.value.value) else {
            panic!("ports")
        };
        let lines: Vec<usize> = ports.iter().map(line_of).collect();
        assert_eq!(lines, [7, 8]);
    }

    #[test]
    fn wrong_shapes_unknown_keys_and_extensions_are_kept_not_refused() {
        let w = parsed("id: a\npool: [1]\nhealtcheck: x\nx-note: y\nimage:\n3: z\n");
        assert!(matches!(
            w.pool.map(|f| f.value.value),
            Some(Section::Other(Node::Seq(_)))
        ));
        let unknown: Vec<(&str, usize)> = w
            .unknown
            .iter()
            .map(|f| (f.name.as_str(), f.line))
            .collect();
        assert_eq!(unknown, [("healtcheck", 3)]);
        assert!(w.image.is_none());
        assert_eq!(w.bad_keys.iter().map(line_of).collect::<Vec<_>>(), [6]);
    }
}
