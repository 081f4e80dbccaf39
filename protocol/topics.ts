/** Topic names of the topic-per-device model, and the identifiers they embed. */
import { ProtocolError } from './errors.js';

export const DEFAULT_TOPIC_PREFIX = 'provision';
/** Device and server ids: safe in a topic level, a file name and a certificate CN. */
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const PREFIX_PATTERN = /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/;

/** `fetch` (board -> server) and `chunk` (server -> board) carry release transfers (transfer.ts). */
export type TopicKind = 'command' | 'ack' | 'enroll' | 'report' | 'fetch' | 'chunk';
const KINDS: ReadonlySet<string> = new Set<TopicKind>(['command', 'ack', 'enroll', 'report', 'fetch', 'chunk']);

export function isValidId(id: unknown): id is string {
  return typeof id === 'string' && ID_PATTERN.test(id);
}

export function assertValidId(id: unknown, what = 'device id'): asserts id is string {
  if (!isValidId(id)) {
    throw new ProtocolError('E_CLAIMS', `${what} must be 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit`);
  }
}

export function assertValidPrefix(prefix: string): void {
  if (!PREFIX_PATTERN.test(prefix)) {
    throw new ProtocolError('E_CLAIMS', `topic prefix "${prefix}" must be levels of A-Z a-z 0-9 . _ - (no wildcards, no leading $ or /)`);
  }
}

export function topicFor(prefix: string, deviceId: string, kind: TopicKind): string {
  assertValidPrefix(prefix);
  assertValidId(deviceId);
  return `${prefix}/${deviceId}/${kind}`;
}

export const commandTopic = (prefix: string, deviceId: string): string => topicFor(prefix, deviceId, 'command');
export const ackTopic = (prefix: string, deviceId: string): string => topicFor(prefix, deviceId, 'ack');
export const enrollTopic = (prefix: string, deviceId: string): string => topicFor(prefix, deviceId, 'enroll');
export const reportTopic = (prefix: string, deviceId: string): string => topicFor(prefix, deviceId, 'report');
export const fetchTopic = (prefix: string, deviceId: string): string => topicFor(prefix, deviceId, 'fetch');
export const chunkTopic = (prefix: string, deviceId: string): string => topicFor(prefix, deviceId, 'chunk');

/** Subscription filter for one kind across all devices (server side). */
export function fleetFilter(prefix: string, kind: TopicKind): string {
  assertValidPrefix(prefix);
  return `${prefix}/+/${kind}`;
}

/** Splits a concrete topic into device id and kind, or returns undefined when it is not one of ours. */
export function parseTopic(prefix: string, topic: string): { deviceId: string; kind: TopicKind } | undefined {
  if (!topic.startsWith(`${prefix}/`)) return undefined;
  const rest = topic.slice(prefix.length + 1).split('/');
  if (rest.length !== 2) return undefined;
  const [deviceId, kind] = rest as [string, string];
  if (!isValidId(deviceId) || !KINDS.has(kind)) return undefined;
  return { deviceId, kind: kind as TopicKind };
}
