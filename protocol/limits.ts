/** Default bounds of the wire format. */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024;
/** A protected header larger than this is refused before it is parsed. */
export const MAX_HEADER_BYTES = 4 * 1024;
/** Default allowance for clock skew when the clock is trusted. */
export const DEFAULT_MAX_SKEW_SECONDS = 300;
/** Default lifetime of a command. */
export const DEFAULT_COMMAND_TTL_SECONDS = 300;
/** Longest lifetime accepted on any message (a sealed message is not a standing credential). */
export const MAX_TTL_SECONDS = 7 * 24 * 3600;
