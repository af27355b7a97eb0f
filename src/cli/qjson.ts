/**
 * JSON as qemu-img prints it, so `--output=json` is byte-for-byte what scripts written for
 * qemu-img expect. qemu builds a QDict (a hash table of 512 buckets keyed by tdb_hash, each
 * bucket a list with the newest entry first) and prints it in bucket order with 4-space
 * indentation; `orderedKeys` reproduces that order. Keys are given in qemu's insertion order.
 */
const QDICT_BUCKET_MAX = 512;

/** qobject/qdict.c tdb_hash: 32-bit unsigned arithmetic over the key's bytes. */
function tdbHash(key: string): number {
  const bytes = Buffer.from(key, 'utf8');
  let value = Math.imul(0x238f13af, bytes.length) >>> 0;
  for (let i = 0; i < bytes.length; i++) value = (value + ((bytes[i] << ((i * 5) % 24)) >>> 0)) >>> 0;
  return (Math.imul(1103515243, value) + 12345) >>> 0;
}

/** The order in which qemu iterates a QDict whose keys were inserted in `keys` order. */
export function orderedKeys(keys: string[]): string[] {
  const indexed = keys.map((k, i) => ({ k, i, bucket: tdbHash(k) % QDICT_BUCKET_MAX }));
  indexed.sort((a, b) => a.bucket - b.bucket || b.i - a.i);
  return indexed.map((e) => e.k);
}

/** A JSON value whose object keys are printed in qemu's QDict order. */
export type QValue = string | number | boolean | null | QValue[] | { [key: string]: QValue | undefined };

/** Pretty JSON as qobject_to_json_pretty writes it. Undefined members are left out. */
export function qjson(value: QValue, indent = 0): string {
  const pad = (n: number) => ' '.repeat(4 * n);
  if (value === null) return 'null';
  if (typeof value === 'string') return quote(value);
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (Array.isArray(value)) {
    if (value.length === 0) return '[]';
    return `[\n${value.map((v) => pad(indent + 1) + qjson(v, indent + 1)).join(',\n')}\n${pad(indent)}]`;
  }
  const keys = orderedKeys(Object.keys(value).filter((k) => value[k] !== undefined));
  if (keys.length === 0) return '{}';
  return `{\n${keys.map((k) => `${pad(indent + 1)}${quote(k)}: ${qjson(value[k] as QValue, indent + 1)}`).join(',\n')}\n${pad(indent)}}`;
}

/** qemu's JSON string escaping: control characters and non-ASCII as \uXXXX. */
function quote(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\b') out += '\\b';
    else if (ch === '\f') out += '\\f';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (c < 0x20 || c > 0x7e) {
      for (const unit of ch.split('')) out += '\\u' + unit.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0');
    } else out += ch;
  }
  return out + '"';
}

/**
 * qemu's human dump of a QDict (format-specific information): `key: value` lines, dashes in
 * keys shown as spaces, nested dicts and lists indented by four spaces per level.
 */
export function qhuman(value: QValue, indent: number): string {
  const pad = ' '.repeat(4 * indent);
  if (Array.isArray(value)) {
    return value.map((v, i) => `${pad}[${i}]:\n${qhuman(v, indent + 1)}`).join('');
  }
  if (value !== null && typeof value === 'object') {
    return orderedKeys(Object.keys(value).filter((k) => value[k] !== undefined))
      .map((k) => {
        const v = value[k] as QValue;
        const composite = v !== null && typeof v === 'object';
        return `${pad}${k.replace(/-/g, ' ')}:${composite ? '\n' : ' '}${qhuman(v, indent + 1)}`;
      })
      .join('');
  }
  return `${value}\n`;
}
