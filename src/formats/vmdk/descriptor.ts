/**
 * The text descriptor (Virtual Disk Format 1.1, §"The Descriptor File"): header keys
 * (version, CID, parentCID, createType, parentFileNameHint), extent lines and the disk
 * database (ddb.*). The parser tolerates comments, blank lines, CRLF, quoting, spaces around
 * '=' and unknown keys; everything it does not understand is kept for rewriting.
 */
import { ImageError } from '../../block/errors';
import * as C from './constants';

export type ExtentAccess = 'RW' | 'RDONLY' | 'NOACCESS';
export type ExtentType = 'FLAT' | 'SPARSE' | 'ZERO' | 'VMFS' | 'VMFSSPARSE' | 'SESPARSE' | 'VMFSRDM' | 'VMFSRAW';

export interface ExtentLine {
  access: ExtentAccess;
  sectors: number;
  type: ExtentType;
  /** Absent for ZERO extents. */
  filename?: string;
  /** Sector offset into the file (FLAT, VMFS). */
  offset: number;
}

export interface Descriptor {
  version: number;
  cid: number;
  /** 0xffffffff: no parent. */
  parentCid: number;
  createType: string;
  parentFileNameHint?: string;
  extents: ExtentLine[];
  /** Every key = value pair, header keys and ddb.* alike, unquoted. */
  keys: Map<string, string>;
  /** The text as read, for rewriting one key in place. */
  text: string;
}

export const NO_PARENT = 0xffffffff;
const EXTENT_TYPES = new Set(['FLAT', 'SPARSE', 'ZERO', 'VMFS', 'VMFSSPARSE', 'SESPARSE', 'VMFSRDM', 'VMFSRAW']);
const ACCESS = new Set(['RW', 'RDONLY', 'NOACCESS']);
const EXTENT_RE = /^(\S+)\s+(\d+)\s+(\S+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$/;
const KEY_RE = /^([A-Za-z0-9_.]+)\s*=\s*(.*)$/;

/** Strips a value's quotes; a comment after the closing quote is dropped. */
function unquote(v: string): string {
  const t = v.trim();
  if (t.startsWith('"')) {
    const end = t.indexOf('"', 1);
    return end < 0 ? t.slice(1) : t.slice(1, end);
  }
  const hash = t.indexOf('#');
  return (hash < 0 ? t : t.slice(0, hash)).trim();
}

function parseCid(file: string, key: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!/^[0-9a-fA-F]{1,8}$/.test(value)) {
    throw new ImageError('BAD_HEADER', `invalid ${key} '${value.slice(0, 40)}' in the descriptor: expected up to 8 hex digits`, { file, field: key, value });
  }
  return parseInt(value, 16) >>> 0;
}

/** True when text looks like a descriptor (the probe; qemu also accepts a bare version= line first). */
export function looksLikeDescriptor(head: Uint8Array): boolean {
  const text = Buffer.from(head.subarray(0, 1024)).toString('latin1');
  if (text.startsWith(C.DESCRIPTOR_SIGNATURE)) return true;
  for (const raw of text.split('\n')) {
    const line = raw.replace(/\r$/, '').trim();
    if (line === '' || line.startsWith('#')) continue;
    return /^version\s*=\s*"?[123]"?$/.test(line);
  }
  return false;
}

export function parseDescriptor(text: string, file: string): Descriptor {
  if (text.length > C.MAX_DESCRIPTOR_BYTES) throw new ImageError('BAD_HEADER', `descriptor is larger than ${C.MAX_DESCRIPTOR_BYTES} bytes`, { file });
  const nul = text.indexOf('\0');
  if (nul >= 0) text = text.slice(0, nul);
  const keys = new Map<string, string>();
  const extents: ExtentLine[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].replace(/\r$/, '').trim();
    if (line === '' || line.startsWith('#')) continue;
    const kv = KEY_RE.exec(line);
    if (kv) {
      keys.set(kv[1], unquote(kv[2]));
      continue;
    }
    const words = line.split(/\s+/);
    if (ACCESS.has(words[0])) {
      extents.push(parseExtentLine(line, i + 1, file));
      continue;
    }
    throw new ImageError('BAD_HEADER', `descriptor line ${i + 1} is neither a key = value pair nor an extent: '${line.slice(0, 80)}'`, { file, field: 'descriptor' });
  }
  const createType = keys.get('createType');
  if (createType === undefined) throw new ImageError('BAD_HEADER', 'descriptor has no createType', { file, field: 'createType' });
  const version = Number(keys.get('version') ?? '1');
  if (!Number.isInteger(version) || version < 1 || version > 3) {
    throw new ImageError('UNSUPPORTED', `unsupported descriptor version '${keys.get('version')}'`, { file, field: 'version' });
  }
  if (extents.length === 0) throw new ImageError('BAD_HEADER', 'descriptor lists no extents', { file, field: 'extents' });
  return {
    version,
    cid: parseCid(file, 'CID', keys.get('CID'), 0),
    parentCid: parseCid(file, 'parentCID', keys.get('parentCID'), NO_PARENT),
    createType,
    parentFileNameHint: keys.get('parentFileNameHint') || undefined,
    extents,
    keys,
    text,
  };
}

function parseExtentLine(line: string, n: number, file: string): ExtentLine {
  const m = EXTENT_RE.exec(line);
  const bad = (why: string) => new ImageError('BAD_HEADER', `invalid extent line ${n} '${line.slice(0, 80)}': ${why}`, { file, field: 'extent' });
  if (!m) throw bad('expected ACCESS SECTORS TYPE "file" [OFFSET]');
  const [, access, sectorsText, type, filename, offsetText] = m;
  if (!EXTENT_TYPES.has(type)) throw bad(`unknown extent type ${type}`);
  const sectors = Number(sectorsText);
  if (!Number.isSafeInteger(sectors) || sectors <= 0 || sectors > C.MAX_EXTENT_SECTORS * 64) throw bad('size in sectors is out of range');
  if (type !== 'ZERO' && (filename === undefined || filename === '')) throw bad('no file name');
  if (type === 'FLAT' && offsetText === undefined) throw bad('a FLAT extent needs an offset');
  if (type !== 'FLAT' && type !== 'VMFS' && type !== 'VMFSRDM' && type !== 'VMFSRAW' && offsetText !== undefined) throw bad(`a ${type} extent takes no offset`);
  const offset = offsetText === undefined ? 0 : Number(offsetText);
  if (!Number.isSafeInteger(offset)) throw bad('offset is out of range');
  return { access: access as ExtentAccess, sectors, type: type as ExtentType, filename, offset };
}

/** The descriptor with the value of `key` replaced (or, if absent, added after the CID lines). */
export function withKey(text: string, key: string, value: string): string {
  const re = new RegExp(`^([ \\t]*${key.replace(/\./g, '\\.')}[ \\t]*=[ \\t]*)([^\\r\\n]*)`, 'm');
  if (re.test(text)) return text.replace(re, (_, lead: string) => `${lead}${value}`);
  return text.replace(/^(createType[^\n]*\n)/m, `$1${key}=${value}\n`);
}

/** A CID as qemu-img prints it (%x: lower case, no leading zeroes). */
export const hex32 = (v: number): string => (v >>> 0).toString(16);

export interface DescriptorSpec {
  cid: number;
  parentCid: number;
  createType: string;
  parentFileNameHint?: string;
  extents: ExtentLine[];
  hwVersion: string;
  adapterType: string;
  toolsVersion: string;
  /** Virtual size in bytes (for the geometry). */
  size: number;
}

/** The descriptor qemu-img writes, key for key (geometry: 63 sectors, 16 heads for ide, 255 otherwise). */
export function buildDescriptor(s: DescriptorSpec): string {
  const heads = s.adapterType === 'ide' ? 16 : 255;
  const extentLines = s.extents
    .map((e) => `${e.access} ${e.sectors} ${e.type} "${e.filename}"${e.type === 'FLAT' ? ` ${e.offset}` : ''}\n`)
    .join('');
  return (
    `${C.DESCRIPTOR_SIGNATURE}\nversion=1\nCID=${hex32(s.cid)}\nparentCID=${hex32(s.parentCid)}\ncreateType="${s.createType}"\n` +
    (s.parentFileNameHint !== undefined ? `parentFileNameHint="${s.parentFileNameHint}"` : '') +
    `\n# Extent description\n${extentLines}\n# The Disk Data Base\n#DDB\n\n` +
    `ddb.virtualHWVersion = "${s.hwVersion}"\nddb.geometry.cylinders = "${Math.floor(s.size / (63 * heads * C.SECTOR))}"\n` +
    `ddb.geometry.heads = "${heads}"\nddb.geometry.sectors = "63"\nddb.adapterType = "${s.adapterType}"\nddb.toolsVersion = "${s.toolsVersion}"\n`
  );
}
