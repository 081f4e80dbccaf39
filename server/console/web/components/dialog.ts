/**
 * A modal dialog on the native <dialog> element: showModal() makes the rest of the page inert, Tab and Shift+Tab
 * cycle inside it (the browser would move on to its own toolbar), Escape closes it (the `cancel` event), and focus
 * returns to what had it before.
 */
import { html } from 'htm/preact';
import type { ComponentChildren, VNode } from 'preact';
import { useLayoutEffect, useRef } from 'preact/hooks';

const FOCUSABLE = 'a[href], button, input, select, textarea, [tabindex]:not([tabindex="-1"])';

export interface DialogProps {
  title: string;
  onClose: () => void;
  children: ComponentChildren;
}

export function Dialog({ title, onClose, children }: DialogProps): VNode {
  const ref = useRef<HTMLDialogElement>(null);
  // A layout effect: the element that had focus (the opening button) is taken before anything else moves it.
  useLayoutEffect(() => {
    const el = ref.current;
    if (!el) return;
    const before = document.activeElement instanceof HTMLElement ? document.activeElement : null;
    if (!el.open) el.showModal();
    const onCancel = (e: Event): void => {
      e.preventDefault();
      onClose();
    };
    const onKey = (e: KeyboardEvent): void => {
      if (e.key !== 'Tab') return;
      const items = [...el.querySelectorAll<HTMLElement>(FOCUSABLE)].filter((x) => !x.hasAttribute('disabled') && x.offsetParent !== null);
      const first = items[0];
      const last = items[items.length - 1];
      if (!first || !last) return;
      const inside = el.contains(document.activeElement);
      if (e.shiftKey && (document.activeElement === first || !inside)) {
        e.preventDefault();
        last.focus();
      } else if (!e.shiftKey && (document.activeElement === last || !inside)) {
        e.preventDefault();
        first.focus();
      }
    };
    el.addEventListener('cancel', onCancel);
    el.addEventListener('keydown', onKey);
    return () => {
      el.removeEventListener('cancel', onCancel);
      el.removeEventListener('keydown', onKey);
      if (el.open) el.close();
      // After the dialog left the page (the browser may move focus to the body then).
      setTimeout(() => {
        if (before?.isConnected) before.focus();
      }, 0);
    };
  }, []);
  return html`<dialog ref=${ref} class="dialog" aria-labelledby="dialog-title">
    <div class="dialog-head">
      <h2 id="dialog-title">${title}</h2>
      <button type="button" class="icon" aria-label="Close" onClick=${onClose}>×</button>
    </div>
    ${children}
  </dialog>`;
}
