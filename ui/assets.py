"""The page's CSS and the small scripts behind its clickable HTML (transcript, persona
cards, conversation list). Each script sends one Gradio event with {act, id}; copying a
message happens in the browser alone."""

CLICK_JS = r"""
element.addEventListener('click', async (e) => {
  const b = e.target.closest('[data-act]');
  if (!b || b.disabled) return;
  const act = b.dataset.act;
  if (act === 'copy') {
    const raw = b.closest('.ch-msg').querySelector('.ch-raw').value;
    try { await navigator.clipboard.writeText(raw); }
    catch (err) {
      const t = document.createElement('textarea'); t.value = raw; document.body.appendChild(t);
      t.select(); document.execCommand('copy'); t.remove();
    }
    b.textContent = 'Copied'; setTimeout(() => { b.textContent = 'Copy'; }, 1500);
    return;
  }
  if (act === 'delete' && !window.confirm(b.dataset.confirm || 'Delete this message and every reply below it?')) return;
  trigger('click', {act: act, id: b.dataset.id || b.dataset.mid || ''});
});
"""

# Persona cards and the conversation list: one click event with {act, id}.
PICK_JS = r"""
element.addEventListener('click', (e) => {
  const b = e.target.closest('[data-act]');
  if (!b) return;
  trigger('click', {act: b.dataset.act, id: b.dataset.id || ''});
});
"""

# The transcript's HTML is replaced on every update, which would reset its scroll
# position: follow the end while the reader is at the bottom, else keep their place.
SCROLL_JS = r"""
let pinned = true, saved = 0;
element.addEventListener('scroll', (e) => {
  const box = e.target;
  if (!box.classList || !box.classList.contains('ch-transcript')) return;
  pinned = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
  saved = box.scrollTop;
}, true);
watch('value', () => {
  const box = element.querySelector('.ch-transcript');
  if (box) box.scrollTop = pinned ? box.scrollHeight : saved;
});
"""

CSS = r"""
.gradio-container { max-width: 1400px !important; }
#ch-title h1 { margin: 0; font-size: 1.4rem; }
.ch-status { font-size: .85rem; padding: 6px 10px; border-radius: 8px; background: var(--background-fill-secondary); }
.ch-status-loading { color: var(--body-text-color-subdued); }
.ch-status-err { color: #b91c1c; }
.ch-spinner { display: inline-block; width: 10px; height: 10px; margin-right: 6px; border: 2px solid #999;
  border-top-color: transparent; border-radius: 50%; animation: ch-spin 1s linear infinite; }
@keyframes ch-spin { to { transform: rotate(360deg); } }
.ch-av { display: inline-flex; align-items: center; justify-content: center; border-radius: 50%; object-fit: cover;
  flex: none; color: #fff; font-weight: 600; }
.ch-av-sm { width: 28px; height: 28px; font-size: .8rem; }
.ch-av-md { width: 36px; height: 36px; font-size: .95rem; }
.ch-av-lg { width: 48px; height: 48px; font-size: 1.2rem; }
.ch-av-you { background: #64748b; }
.ch-cards, .ch-convs { display: flex; flex-direction: column; gap: 4px; }
.ch-card, .ch-conv { display: flex; gap: 10px; align-items: center; text-align: left; width: 100%; padding: 6px 8px;
  border-radius: 8px; border: 1px solid transparent; background: none; cursor: pointer; color: inherit; }
.ch-card:focus, .ch-conv:focus { outline: none; }
.ch-card:focus-visible, .ch-conv:focus-visible { outline: 2px solid var(--color-accent); }
.ch-card:hover, .ch-conv:hover { background: var(--background-fill-secondary); }
.ch-card-on, .ch-conv-on { border-color: var(--color-accent); background: var(--background-fill-secondary); }
.ch-card-text { display: flex; flex-direction: column; min-width: 0; }
.ch-card-name { font-weight: 600; }
.ch-card-line, .ch-conv-meta { font-size: .8rem; color: var(--body-text-color-subdued); white-space: nowrap;
  overflow: hidden; text-overflow: ellipsis; }
.ch-conv-meta { max-width: 100%; }
.ch-conv { flex-direction: column; align-items: flex-start; gap: 0; }
.ch-conv-title { font-weight: 500; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; max-width: 100%; }
.ch-active { display: flex; gap: 12px; align-items: center; padding: 4px 2px; }
.ch-active-name { font-size: 1.05rem; }
#ch-transcript .ch-transcript { height: 58vh; overflow-y: auto; border: 1px solid var(--border-color-primary);
  border-radius: 10px; padding: 8px 12px; background: var(--background-fill-primary); }
.ch-msg { display: flex; gap: 10px; padding: 10px 4px; border-bottom: 1px solid var(--border-color-primary); }
.ch-msg:last-child { border-bottom: none; }
.ch-user .ch-main { background: var(--background-fill-secondary); border-radius: 10px; padding: 4px 10px; }
.ch-main { flex: 1; min-width: 0; }
.ch-head { display: flex; gap: 8px; align-items: center; font-size: .9rem; }
.ch-who { font-weight: 600; }
.ch-tag { font-size: .7rem; padding: 0 6px; border-radius: 6px; background: var(--background-fill-secondary);
  color: var(--body-text-color-subdued); border: 1px solid var(--border-color-primary); }
.ch-tag-stop { color: #b45309; }
.ch-tag-lora { color: #4f46e5; }
.ch-tag-wait { color: #0369a1; }
.ch-stop-one { color: #b91c1c; }
.ch-live-together { display: grid; grid-template-columns: repeat(auto-fit, minmax(220px, 1fr)); gap: 8px; }
.ch-live-together .ch-msg { border: 1px solid var(--border-color-primary); border-radius: 8px; }
.ch-faces { display: inline-flex; }
.ch-faces .ch-av { margin-right: -8px; border: 2px solid var(--background-fill-primary); }
.ch-active-group .ch-faces { margin-right: 8px; }
#ch-group-new { padding: 8px; }
.ch-swipe { margin-left: auto; display: inline-flex; gap: 4px; align-items: center; font-size: .8rem; }
.ch-body { overflow-wrap: anywhere; }
.ch-body p { margin: .3em 0; }
.ch-body pre { padding: 8px; border-radius: 6px; background: var(--background-fill-secondary); overflow-x: auto; }
.ch-empty { color: var(--body-text-color-subdued); font-style: italic; }
.ch-tools { display: flex; gap: 6px; opacity: .35; transition: opacity .15s; }
.ch-msg:hover .ch-tools, .ch-tools:focus-within { opacity: 1; }
.ch-btn { font-size: .75rem; padding: 1px 8px; border-radius: 6px; border: 1px solid var(--border-color-primary);
  background: var(--background-fill-primary); cursor: pointer; color: inherit; }
.ch-btn:disabled { opacity: .35; cursor: default; }
.ch-btn:hover:not(:disabled) { border-color: var(--color-accent); }
.ch-cursor { display: inline-block; width: 7px; height: 1em; background: currentColor; vertical-align: text-bottom;
  animation: ch-blink 1s steps(1) infinite; }
@keyframes ch-blink { 50% { opacity: 0; } }
.ch-notice { padding: 8px; font-size: .9rem; color: var(--body-text-color-subdued); }
.ch-warn { font-size: .8rem; color: #b45309; }
.ch-placeholder { padding: 16px; color: var(--body-text-color-subdued); text-align: center; }
#ch-convlist { max-height: 40vh; overflow-y: auto; }
#ch-personas-list { max-height: 38vh; overflow-y: auto; }
/* Train tab */
.ch-training { color: var(--color-accent); }
.tr-empty { color: var(--body-text-color-subdued); padding: 8px 2px; }
.tr-run { padding: 10px 12px; border: 1px solid var(--border-color-primary); border-radius: 10px; }
.tr-head { display: flex; justify-content: space-between; gap: 8px; flex-wrap: wrap; }
.tr-state { color: var(--body-text-color-subdued); }
.tr-bar { height: 10px; margin: 8px 0 6px; border-radius: 5px; background: var(--background-fill-secondary); overflow: hidden; }
.tr-fill { height: 100%; background: var(--color-accent); transition: width .6s ease; }
.tr-finished .tr-fill { background: #10b981; }
.tr-failed .tr-fill, .tr-cancelled .tr-fill { background: #9ca3af; }
.tr-facts, .tr-sub { font-size: .85rem; color: var(--body-text-color-subdued); }
.tr-error { color: #b91c1c; margin-top: 6px; font-size: .9rem; }
.tr-note { margin-top: 6px; font-size: .9rem; }
.tr-table { border-collapse: collapse; font-size: .9rem; width: 100%; }
.tr-table th, .tr-table td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--border-color-primary); }
.tr-verdict { font-weight: 600; margin: 6px 0; }
.tr-samples { display: flex; flex-direction: column; gap: 10px; }
.tr-sample { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px; }
.tr-prompt, .tr-cols > div { white-space: pre-wrap; overflow-wrap: anywhere; font-size: .9rem; }
.tr-cols { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 8px; margin-top: 6px; }
.tr-sample span { display: block; font-size: .75rem; font-weight: 600; color: var(--body-text-color-subdued); }
.tr-s-finished { color: #059669; } .tr-s-failed { color: #b91c1c; }
.tr-export ul { margin: 4px 0 0 18px; font-size: .85rem; }
.tr-warn { color: #b45309; margin-top: 6px; font-size: .9rem; }
.tr-kept { font-size: .9rem; margin: 6px 0; }
.tr-moved { margin: 2px 0 0 18px; font-size: .85rem; }
.tr-cols.tr-two { grid-template-columns: repeat(2, minmax(0, 1fr)); }
"""
